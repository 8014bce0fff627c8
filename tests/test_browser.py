"""The browser page (web/index.html) in headless Chromium against a real chat-server.

The node is a ``chat-server serve --ws-port`` process on free ports with an
SQLite file; the page is opened as a file with ``?ws=`` pointing at it, as a
person would with a single node. Two isolated browser contexts are two users.

What the test needs it installs: Debian's ``chromium`` (with apt-get, when
``/usr/bin/chromium`` is missing) and Playwright's Python package (a dev extra;
its own browser download is never used). If either cannot be had, the test is
skipped and says why.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

from chat.client import connect_websocket

from .bulk_support import bulk_friends, bulk_users
from .cluster_support import nginx_tls_context, write_nginx_certificate
from .support import free_port, register
from .ws_support import render_web_conf

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "web" / "index.html"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
APT_TIMEOUT = 900


def _install_chromium() -> str | None:
    """Install Debian's chromium; return why not, or None on success."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install chromium"
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return "installing chromium needs root (or sudo)"
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for command in (
        [*prefix, "apt-get", *lock, "update", "-qq"],
        [*prefix, "apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} took longer than {APT_TIMEOUT} s"
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
    return (
        None
        if CHROMIUM.exists()
        else "apt-get installed chromium, yet /usr/bin/chromium is missing"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is missing: pip install -e '.[dev]'"
    )
    if not CHROMIUM.exists():
        problem = _install_chromium()
        if problem is not None:
            pytest.skip(f"cannot install Debian's chromium: {problem}")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def ws_port(tmp_path: Path) -> Iterator[int]:
    """A chat-server process with WebSocket on; yields its WebSocket port."""
    port, ws_port = free_port(), free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chat",
            "serve",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--ws-port={ws_port}",
            f"--database=sqlite:///{tmp_path / 'chat.db'}",
            "--node-id=browser-test",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        # Only the flags count: no CHAT_REDIS_URL or the like from the caller's shell.
        env={key: value for key, value in os.environ.items() if not key.startswith("CHAT_")},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"chat-server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", ws_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("chat-server did not open its WebSocket port")
                time.sleep(0.1)
        yield ws_port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def ws_url(ws_port: int) -> str:
    return f"ws://127.0.0.1:{ws_port}/ws"


@pytest.fixture
def nginx_port(ws_port: int, tmp_path: Path) -> Iterator[int]:
    """nginx from infra/nginx/nginx.conf, both WebSocket upstreams on the one node."""
    with _nginx(ws_port, tmp_path, free_port(), free_port()):
        yield port_of(tmp_path)


def port_of(tmp_path: Path) -> int:
    return int((tmp_path / "nginx" / "http-port").read_text())


@pytest.fixture
def nginx_https_port(ws_port: int, tmp_path: Path) -> Iterator[int]:
    """The same nginx; yields its HTTPS port (the page and wss:// /ws; a certificate for
    127.0.0.1 and localhost from the test authority, ``NGINX_CA``)."""
    https_port = free_port()
    with _nginx(ws_port, tmp_path, free_port(), https_port):
        yield https_port


@contextmanager
def _nginx(ws_port: int, tmp_path: Path, port: int, https_port: int) -> Iterator[None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.skip("nginx is not installed (scripts/test installs it)")
    directory = tmp_path / "nginx"
    directory.mkdir()
    (directory / "http-port").write_text(str(port))
    write_nginx_certificate(directory)  # the shipped config's HTTPS listener needs one
    conf = directory / "nginx.conf"
    conf.write_text(render_web_conf(port, (ws_port, ws_port), https_port))
    process = subprocess.Popen(
        [
            *(binary, "-c", str(conf), "-p", f"{directory}/"),
            *("-e", f"{directory}/early.log"),  # where nginx logs before it reads the config
            *("-g", "daemon off;"),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (directory / "nginx.pid").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log = directory / "nginx-error.log"
                pytest.fail(f"nginx did not start: {log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def open_page(browser: Browser, url: str, problems: list[str] | None = None) -> Page:
    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT_MS)
    if problems is not None:
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    return page


def sign_in(page: Page, name: str, *, register: bool) -> None:
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill("secret")
    button = "Create account" if register else "Log in"
    page.get_by_role("button", name=button, exact=True).click()


def test_two_browser_users_chat(browser: Browser, ws_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    url = PAGE.as_uri() + "?ws=" + ws_url
    alice, bob = open_page(browser, url), open_page(browser, url)
    expect(alice.get_by_label("Server")).to_have_value(ws_url)  # taken from ?ws=

    sign_in(alice, "alice", register=True)
    sign_in(bob, "bob", register=True)
    expect(alice.locator("#me-name")).to_have_text("alice")
    expect(bob.locator("#me-name")).to_have_text("bob")
    expect(alice.locator("#status")).to_have_text(f"Connected to {ws_url}")

    # Friends, with presence on both sides.
    alice.get_by_label("Add a friend by name").fill("bob")
    alice.get_by_role("button", name="Add", exact=True).click()
    bob_in_alice = alice.locator("#friend-list").get_by_role("button", name=re.compile("^bob"))
    expect(bob_in_alice).to_contain_text("online")
    alice_in_bob = bob.locator("#friend-list").get_by_role("button", name=re.compile("^alice"))
    expect(alice_in_bob).to_contain_text("online")  # the friend_added event

    # One to one: markup in a message stays text.
    hello = "Hello <b>Bob</b> & <img src=x onerror=alert(1)>"
    bob_in_alice.click()
    alice.get_by_label("Message", exact=True).fill(hello)
    alice.get_by_label("Message", exact=True).press("Enter")
    expect(alice.get_by_role("log")).to_contain_text(hello)
    expect(alice_in_bob).to_contain_text("1")  # an unread badge
    alice_in_bob.click()
    bob_log = bob.get_by_role("log")
    expect(bob_log).to_contain_text(hello)
    assert bob_log.locator("b, img").count() == 0
    bob.get_by_label("Message", exact=True).fill("Hi Alice")
    bob.get_by_role("button", name="Send", exact=True).click()
    expect(alice.get_by_role("log")).to_contain_text("Hi Alice")

    # A group: alice creates it, bob joins by its number, both talk.
    alice.get_by_label("New group name").fill("book club")
    alice.get_by_role("button", name="Create", exact=True).click()
    expect(alice.locator("#conversation-title")).to_have_text("book club")
    detail = alice.locator("#conversation-detail").inner_text()
    found = re.search(r"Group #(\d+)", detail)
    assert found is not None, detail
    bob.get_by_label("Join a group by number").fill(found.group(1))
    bob.get_by_role("button", name="Join").click()
    expect(bob.locator("#conversation-title")).to_have_text("book club")
    bob.get_by_label("Message", exact=True).fill("chapter one?")
    bob.get_by_label("Message", exact=True).press("Enter")
    expect(alice.get_by_role("log")).to_contain_text("chapter one?")

    # Offline messages arrive at the next login, marked as such. Meanwhile alice's
    # page follows bob's presence live (presence events: the page no longer asks
    # about friends, so nothing else could change the dot).
    bob.get_by_role("button", name="Log out", exact=True).click()
    expect(bob.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(bob_in_alice).to_contain_text("offline")
    expect(bob_in_alice.locator(".presence.offline")).to_have_count(1)
    bob_in_alice.click()
    alice.get_by_label("Message", exact=True).fill("while you were out")
    alice.get_by_label("Message", exact=True).press("Enter")
    expect(alice.get_by_role("log")).to_contain_text("while you were out")
    sign_in(bob, "bob", register=False)
    expect(bob.locator("#sidebar-note")).to_have_text("1 message arrived while you were away.")
    expect(bob_in_alice.locator(".presence.online")).to_have_count(1)
    expect(bob_in_alice).not_to_contain_text("offline")
    bob.locator("#friend-list").get_by_role("button", name=re.compile("^alice")).click()
    expect(bob.get_by_role("log")).to_contain_text("while you were out")
    expect(bob.get_by_role("log")).to_contain_text("received while you were away")

    alice.screenshot(path=str(tmp_path / "alice.png"))
    bob.screenshot(path=str(tmp_path / "bob.png"))


def test_the_page_through_nginx(browser: Browser, nginx_port: int) -> None:
    """Served by nginx, the page finds the WebSocket at /ws of its own address."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    url = f"http://127.0.0.1:{nginx_port}/"
    carol, dave = open_page(browser, url, problems), open_page(browser, url, problems)
    expect(carol.get_by_label("Server")).to_have_value(f"ws://127.0.0.1:{nginx_port}/ws")
    sign_in(carol, "carol", register=True)
    sign_in(dave, "dave", register=True)
    expect(dave.locator("#me-name")).to_have_text("dave")
    carol.get_by_label("Add a friend by name").fill("dave")
    carol.get_by_role("button", name="Add", exact=True).click()
    carol.locator("#friend-list").get_by_role("button", name=re.compile("^dave")).click()
    carol.get_by_label("Message", exact=True).fill("proxied")
    carol.get_by_label("Message", exact=True).press("Enter")
    dave.locator("#friend-list").get_by_role("button", name=re.compile("^carol")).click()
    expect(dave.get_by_role("log")).to_contain_text("proxied")
    assert problems == []  # no script error, no Content-Security-Policy violation


def spki_pin(certificate_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate: what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_the_page_over_https_and_wss(
    browser: Browser, nginx_https_port: int, tmp_path: Path
) -> None:
    """The page from nginx's HTTPS port, in a Chromium that trusts only that certificate
    (pinned by its public key, no certificate error ignored otherwise): it connects to
    wss:// on the same port, and exchanges messages both ways with a ChatClient
    connected over WSS and verifying the test authority."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    leaf = (tmp_path / "nginx" / "tls" / "server.pem").read_bytes()
    leaf = leaf[: leaf.index(b"-----END CERTIFICATE-----") + 25]  # the first of the chain
    pinned = browser.browser_type.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*CHROMIUM_FLAGS, f"--ignore-certificate-errors-spki-list={spki_pin(leaf)}"],
    )
    wss = f"wss://localhost:{nginx_https_port}/ws"

    async def as_fred(*, new: bool = False, send: str | None = None) -> list[str]:
        """fred over WSS (``new``: registered first): sends ``send`` to eve; answers the
        messages that came to him within 2 s of his login."""
        async with connect_websocket(wss, ssl_context=nginx_tls_context()) as fred:
            if new:
                await register(fred, "fred", "secret")
            await fred.call("login", name="fred", password="secret")
            if send is not None:
                eve = await fred.call("find_user", name="eve")
                await fred.call("send", to=eve["user"]["id"], text=send)
            texts = []
            with trio.move_on_after(2):
                while True:
                    event = await fred.next_event()
                    if event.get("type") == "message":
                        texts.append(event["text"])
            return texts

    try:
        problems: list[str] = []
        sockets: list[str] = []
        page = pinned.new_context().new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(f"https://localhost:{nginx_https_port}/")
        expect(page.get_by_label("Server")).to_have_value(wss)
        trio.run(partial(as_fred, new=True))
        sign_in(page, "eve", register=True)
        expect(page.locator("#me-name")).to_have_text("eve")
        expect(page.locator("#status")).to_have_text(f"Connected to {wss}")
        page.get_by_label("Add a friend by name").fill("fred")
        page.get_by_role("button", name="Add", exact=True).click()
        fred_in_eve = page.locator("#friend-list").get_by_role("button", name=re.compile("^fred"))
        expect(fred_in_eve).to_contain_text("offline")
        trio.run(partial(as_fred, send="from python over wss"))
        fred_in_eve.click()
        expect(page.get_by_role("log")).to_contain_text("from python over wss")
        page.get_by_label("Message", exact=True).fill("from chromium over wss")
        page.get_by_label("Message", exact=True).press("Enter")
        expect(page.get_by_role("log")).to_contain_text("from chromium over wss")
        assert "from chromium over wss" in trio.run(as_fred)
        assert sockets and all(url == wss for url in sockets), sockets
        assert problems == []
    finally:
        pinned.close()


def test_remove_and_block_from_a_friends_menu(
    browser: Browser, ws_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    url = PAGE.as_uri() + "?ws=" + ws_url
    problems: list[str] = []
    alice, bob = open_page(browser, url, problems), open_page(browser, url, problems)
    sign_in(alice, "alice", register=True)
    sign_in(bob, "bob", register=True)
    expect(bob.locator("#me-name")).to_have_text("bob")

    def befriend() -> None:
        alice.get_by_label("Add a friend by name").fill("bob")
        alice.get_by_role("button", name="Add", exact=True).click()
        expect(alice.locator("#sidebar-note")).to_have_text("bob is now your friend.")
        expect(bob.get_by_role("button", name="Actions for alice")).to_be_visible()

    befriend()
    alice.get_by_role("button", name="Actions for bob").click()
    alice.get_by_role("button", name="Remove friend").click()
    expect(alice.locator("#sidebar-note")).to_have_text("bob is no longer your friend.")
    expect(alice.get_by_role("button", name="Actions for bob")).to_have_count(0)
    # bob is told (friend_removed) and alice leaves his friend list.
    expect(bob.locator("#sidebar-note")).to_have_text("alice ended your friendship.")
    expect(bob.get_by_role("button", name="Actions for alice")).to_have_count(0)

    befriend()
    alice.once("dialog", lambda dialog: dialog.accept())  # "Block bob?"
    alice.get_by_role("button", name="Actions for bob").click()
    alice.get_by_role("button", name="Block").click()
    expect(alice.locator("#sidebar-note")).to_have_text("bob is blocked.")
    expect(alice.get_by_role("button", name="Actions for bob")).to_have_count(0)

    # bob still has alice listed (a block tells him nothing), but cannot reach her.
    bob.locator("#friend-list").get_by_role("button", name=re.compile("^alice")).click()
    bob.get_by_label("Message", exact=True).fill("hello?")
    bob.get_by_label("Message", exact=True).press("Enter")
    expect(bob.get_by_role("log")).to_contain_text("Refused: one of you has blocked the other.")
    assert problems == []


def test_a_long_friend_list_is_paged_in(browser: Browser, ws_url: str, tmp_path: Path) -> None:
    """1,000 friends with long names do not fit the login reply; the page reads the rest."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    database = f"sqlite:///{tmp_path / 'chat.db'}"
    names = ["victim", *(f"{'y' * 40}{n:04d}" for n in range(1_000))]

    async def fill() -> None:
        victim, *others = await bulk_users(database, names)
        await bulk_friends(database, victim, others)

    trio.run(fill)
    page = open_page(browser, PAGE.as_uri() + "?ws=" + ws_url)
    sign_in(page, "victim", register=False)
    expect(page.locator("#me-name")).to_have_text("victim")
    expect(page.locator("#friend-list > li")).to_have_count(1_000)
    expect(page.get_by_role("button", name="Actions for " + names[-1])).to_have_count(1)


SEND_AS = """async ([url, me, to, count]) => {
  // Another user, from the test: registers, befriends `to`, sends `count` numbered messages.
  const ws = new WebSocket(url);
  const replies = [];
  ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m.rid) replies[m.rid](m); };
  await new Promise((ok) => { ws.onopen = ok; });
  let rid = 0;
  const call = (fields) => new Promise((ok) => { rid += 1; replies[rid] = ok;
    ws.send(JSON.stringify(Object.assign({ rid: rid }, fields))); });
  await call({ type: "register", name: me, password: "secret" });
  await call({ type: "login", name: me, password: "secret" });
  const found = await call({ type: "find_user", name: to });
  await call({ type: "add_friend", user_id: found.user.id });
  for (let n = 1; n <= count; n++) {
    await call({ type: "send", to: found.user.id, text: me + " " + n });
  }
  ws.close();
}"""

RECORD_SOCKETS = """
window.__sockets = [];
window.WebSocket = class extends window.WebSocket {
  constructor(...args) { super(...args); window.__sockets.push(this); }
};
window.__dropConnections = () => {
  for (const ws of window.__sockets) { if (ws.readyState === WebSocket.OPEN) ws.close(4000); }
};
"""


def test_reload_signs_in_again_and_shows_history(browser: Browser, ws_url: str) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    url = PAGE.as_uri() + "?ws=" + ws_url
    alice = open_page(browser, url, problems)
    sign_in(alice, "alice", register=True)
    expect(alice.locator("#me-name")).to_have_text("alice")
    alice.evaluate(SEND_AS, [ws_url, "carl", "alice", 60])
    carl = alice.locator("#friend-list").get_by_role("button", name=re.compile("^carl"))
    expect(carl).to_contain_text("60")  # unread
    carl.click()
    log = alice.get_by_role("log")
    expect(log.locator(".message")).to_have_count(60)
    alice.get_by_label("Message", exact=True).fill("hello carl")
    alice.get_by_label("Message", exact=True).press("Enter")
    expect(log).to_contain_text("hello carl")

    alice.reload()  # no password asked: the token in localStorage signs in again
    expect(alice.locator("#me-name")).to_have_text("alice")
    expect(alice.locator("#conversation-title")).to_have_text("carl")  # reopened
    messages = log.locator(".message")
    expect(messages).to_have_count(50)  # the last 50
    expect(messages.last).to_contain_text("hello carl")
    expect(messages.first.locator(".text")).to_have_text("carl 12")  # 60 + 1 - 50 + 1
    expect(log.get_by_role("button", name="Show older messages")).to_be_visible()
    log.evaluate("list => { list.scrollTop = 0; }")  # scrolling up loads the older page
    expect(messages).to_have_count(61)
    expect(messages.first.locator(".text")).to_have_text("carl 1")
    expect(log).to_contain_text("The start of this conversation")

    # Log out forgets the token, here and on the server: a reload asks for the password.
    token = alice.evaluate("JSON.parse(localStorage.getItem('chat.session')).token")
    alice.get_by_role("button", name="Log out", exact=True).click()
    expect(alice.get_by_role("heading", name="Sign in")).to_be_visible()
    assert alice.evaluate("localStorage.getItem('chat.session')") is None
    alice.evaluate(
        "token => localStorage.setItem('chat.session', JSON.stringify("
        f"{{url: {ws_url!r}, name: 'alice', token: token, current: null}}))",
        token,
    )
    alice.reload()
    expect(alice.locator("#login-error")).to_have_text("Your session has ended; sign in again.")
    expect(alice.get_by_role("heading", name="Sign in")).to_be_visible()
    assert problems == []


def test_a_lost_connection_comes_back_by_itself(browser: Browser, ws_url: str) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    url = PAGE.as_uri() + "?ws=" + ws_url
    context = browser.new_context()
    context.add_init_script(RECORD_SOCKETS)
    dana = context.new_page()
    dana.set_default_timeout(TIMEOUT_MS)
    dana.goto(url)
    sign_in(dana, "dana", register=True)
    expect(dana.locator("#me-name")).to_have_text("dana")
    dana.evaluate(SEND_AS, [ws_url, "erin", "dana", 2])
    dana.locator("#friend-list").get_by_role("button", name=re.compile("^erin")).click()
    log = dana.get_by_role("log")
    expect(log.locator(".message")).to_have_count(2)

    dana.evaluate("window.__dropConnections()")  # the line drops
    expect(dana.locator("#status")).to_contain_text("reconnecting")
    # Sent while dana is away (the first retry waits about a second).
    dana.evaluate(SEND_AS, [ws_url, "fay", "dana", 1])
    expect(dana.locator("#status")).to_have_text(f"Connected to {ws_url}")
    expect(dana.locator("#me-name")).to_have_text("dana")  # no sign-in form on the way
    dana.evaluate("window.__dropConnections()")  # and once more: the backoff starts over
    expect(dana.locator("#status")).to_contain_text("reconnecting")
    expect(dana.locator("#status")).to_have_text(f"Connected to {ws_url}")
    # The open conversation fetched what it missed: nothing, and nothing twice.
    expect(log.locator(".message")).to_have_count(2)
    fay = dana.locator("#friend-list").get_by_role("button", name=re.compile("^fay"))
    expect(fay).to_contain_text("1")  # unread
    fay.click()
    expect(log.locator(".message")).to_have_count(1)
    expect(log).to_contain_text("fay 1")

    # While the server cannot be reached, the pauses grow: about 1 s, 2 s, 4 s (±20%).
    dana.route_web_socket(re.compile(".*"), lambda ws: ws.close())
    dana.evaluate("window.__dropConnections()")
    status = dana.locator("#status")
    expect(status).to_have_text(re.compile(r"reconnecting in [12] s"))
    expect(status).to_have_text(re.compile(r"reconnecting in [23] s"))
    expect(status).to_have_text(re.compile(r"reconnecting in [45] s"))
    expect(dana.locator("#me-name")).to_have_text("dana")  # the page stays as it was


RECORD_FRAMES = """
window.__frames = [];  // [direction, frame]: what the page's sockets sent ("out") and got ("in")
window.WebSocket = class extends window.WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (e) => window.__frames.push(["in", JSON.parse(e.data)]));
  }
  send(data) { window.__frames.push(["out", JSON.parse(data)]); return super.send(data); }
};
"""

ACKED_UP_TO = """([seq]) => {
  // An `ack` covering `seq` that the server has answered `ok`.
  const acks = window.__frames.filter(([way, f]) => way === "out" && f.type === "ack");
  return acks.some(([, ack]) => ack.seq >= seq && window.__frames.some(
    ([way, f]) => way === "in" && f.type === "ok" && f.rid === ack.rid));
}"""


def test_the_page_and_chat_cli_as_one_user(browser: Browser, ws_url: str, tmp_path: Path) -> None:
    """One user on two devices (protocol 1.2): the page and chat-cli side by side."""
    from playwright.sync_api import expect

    pexpect = pytest.importorskip("pexpect")
    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    context = browser.new_context()
    context.add_init_script(RECORD_FRAMES)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    url = PAGE.as_uri() + "?ws=" + ws_url
    page.goto(url)
    sign_in(page, "alice", register=True)
    expect(page.locator("#me-name")).to_have_text("alice")
    device = page.evaluate("localStorage.getItem('chat.device')")
    assert re.fullmatch(r"web-[0-9a-f]{8}", device), device
    (login,) = page.evaluate("window.__frames.filter(([w, f]) => f.type === 'login')")
    assert login[1]["device"] == device and login[1]["acks"] is True

    cli = pexpect.spawn(
        sys.executable,
        ["-m", "chat.cli.client", "--url", ws_url, "--device", "terminal"],
        env={
            **os.environ,
            "PROMPT_TOOLKIT_NO_CPR": "1",
            "TERM": "xterm",
            "NO_COLOR": "1",
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
        },
        encoding="utf-8",
        timeout=TIMEOUT_MS / 1000,
        dimensions=(40, 160),
    )
    try:
        cli.sendline("/login alice secret")
        cli.expect_exact("logged in as alice")

        # A third user writes: both devices show it.
        page.evaluate(SEND_AS, [ws_url, "carl", "alice", 1])
        cli.expect(r"\d\d:\d\d carl: carl 1")
        carl = page.locator("#friend-list").get_by_role("button", name=re.compile("^carl"))
        carl.click()
        log = page.get_by_role("log")
        expect(log.locator(".message").filter(has_text="carl 1")).not_to_have_class(
            re.compile("mine")
        )

        # What alice sends from the terminal is hers in the page, not carl's, not unread.
        cli.sendline("/msg carl from the terminal")
        cli.expect_exact("you -> carl: from the terminal")
        mine = log.locator(".message.mine").filter(has_text="from the terminal")
        expect(mine).to_have_count(1)
        expect(mine.locator(".from")).to_have_text("You")
        cli.sendline("/group create den")
        cli.expect_exact("created group den")
        expect(page.locator("#group-list")).to_contain_text("den")  # group_joined

        # A reload is the same device, so its token (which belongs to it) still works.
        page.reload()
        expect(page.locator("#me-name")).to_have_text("alice")
        assert page.evaluate("localStorage.getItem('chat.device')") == device
        logins = page.evaluate("window.__frames.filter(([w, f]) => f.type === 'login')")
        assert logins and all(f["device"] == device and "token" in f for _, f in logins)

        # Away (the page is closed), 20 messages wait for the page's device; back, it
        # renders them and acknowledges them, a burst at a time.
        page.goto("about:blank")  # (Chromium lets no socket out of about:blank to here)
        open_page(browser, url, problems).evaluate(SEND_AS, [ws_url, "dora", "alice", 20])
        cli.expect_exact("dora: dora 20")
        page.goto(url)
        dora = page.locator("#friend-list").get_by_role("button", name=re.compile("^dora"))
        expect(dora).to_contain_text("20")  # unread
        page.wait_for_function(ACKED_UP_TO, arg=[20])
        acks = page.evaluate("window.__frames.filter(([w, f]) => f.type === 'ack').length")
        assert 1 <= acks < 20, acks
        page.reload()  # acknowledged: nothing waits for this device any more
        expect(page.locator("#me-name")).to_have_text("alice")
        page.wait_for_function("window.__frames.some(([w, f]) => f.type === 'ok' && f.user)")
        reply = page.evaluate("window.__frames.find(([w, f]) => f.type === 'ok' && f.user)[1]")
        assert reply["offline"] == 0, reply

        # "Log out everywhere" on the terminal signs the page out, and it says why.
        cli.sendline("/logout everywhere")
        cli.expect_exact("logged out here and on all your other devices")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.locator("#login-error")).to_have_text(
            "You were signed out: \u201cLog out everywhere\u201d was used on another device."
        )
        assert page.evaluate("localStorage.getItem('chat.session')") is None
        assert page.evaluate("localStorage.getItem('chat.device')") == device  # kept
        cli.sendline("/quit")
        cli.expect(pexpect.EOF)
    finally:
        cli.close(force=True)
    assert problems == []


def test_friend_requests_are_shown_and_answered(browser: Browser, ws_url: str) -> None:
    """Protocol 1.2 approval in the page: the setting, a request arriving live, Accept
    (the asker is told) and Decline (the asker is not)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    url = PAGE.as_uri() + "?ws=" + ws_url
    problems: list[str] = []
    alice, bob, carol = (open_page(browser, url, problems) for _ in range(3))
    sign_in(alice, "alice", register=True)
    sign_in(bob, "bob", register=True)
    sign_in(carol, "carol", register=True)
    expect(carol.locator("#me-name")).to_have_text("carol")

    approve = alice.get_by_label("Ask me before anyone adds me as a friend")
    expect(approve).not_to_be_checked()
    approve.check()
    expect(alice.locator("#sidebar-note")).to_have_text("Friend requests now wait for your answer.")

    bob.get_by_label("Add a friend by name").fill("alice")
    bob.get_by_role("button", name="Add", exact=True).click()
    expect(bob.locator("#sidebar-note")).to_have_text("Asked alice; waiting for their answer.")
    expect(bob.get_by_role("button", name="Actions for alice")).to_have_count(0)
    expect(alice.locator("#sidebar-note")).to_have_text("bob asks to be your friend.")
    requests = alice.get_by_role("list", name="Friend requests")
    expect(requests).to_contain_text("bob")

    carol.get_by_label("Add a friend by name").fill("alice")
    carol.get_by_role("button", name="Add", exact=True).click()
    expect(requests.get_by_role("listitem")).to_have_count(2)

    alice.get_by_role("button", name="Accept bob").click()
    expect(alice.locator("#sidebar-note")).to_have_text("bob is now your friend.")
    bob_in_alice = alice.locator("#friend-list").get_by_role("button", name=re.compile("^bob"))
    expect(bob_in_alice).to_contain_text("online")
    alice_in_bob = bob.locator("#friend-list").get_by_role("button", name=re.compile("^alice"))
    expect(alice_in_bob).to_contain_text("online")  # the friend_added event

    alice.get_by_role("button", name="Decline carol").click()
    expect(alice.locator("#sidebar-note")).to_have_text("You declined carol's request.")
    expect(alice.get_by_role("heading", name="Friend requests")).to_be_hidden()
    expect(carol.get_by_role("button", name="Actions for alice")).to_have_count(0)

    # The setting and the (empty) list come back with the next sign-in.
    alice.get_by_role("button", name="Log out", exact=True).click()
    sign_in(alice, "alice", register=False)
    expect(alice.locator("#me-name")).to_have_text("alice")
    expect(approve).to_be_checked()
    expect(alice.get_by_role("heading", name="Friend requests")).to_be_hidden()


def test_unread_badges_receipts_and_typing(browser: Browser, ws_url: str) -> None:
    """Badges come from the server's counts at sign-in (what another device read does
    not count) and then count live; opening a conversation marks it read, and the
    sender's page turns "Sent ✓" into "Read ✓✓"; typing shows "… is typing"."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    url = PAGE.as_uri() + "?ws=" + ws_url
    alice, bob = open_page(browser, url, problems), open_page(browser, url, problems)
    sign_in(alice, "alice", register=True)
    sign_in(bob, "bob", register=True)
    expect(alice.locator("#me-name")).to_have_text("alice")
    expect(bob.locator("#me-name")).to_have_text("bob")
    alice.get_by_label("Add a friend by name").fill("bob")
    alice.get_by_role("button", name="Add", exact=True).click()
    bob_in_alice = alice.locator("#friend-list").get_by_role("button", name=re.compile("^bob"))
    alice_in_bob = bob.locator("#friend-list").get_by_role("button", name=re.compile("^alice"))
    expect(alice_in_bob).to_contain_text("online")

    # alice is away; bob writes three times; alice reads the first two on her phone.
    alice.get_by_role("button", name="Log out", exact=True).click()
    expect(alice.get_by_role("heading", name="Sign in")).to_be_visible()
    alice_in_bob.click()
    for text in ("one", "two", "three"):
        bob.get_by_label("Message", exact=True).fill(text)
        bob.get_by_label("Message", exact=True).press("Enter")
        expect(bob.get_by_role("log")).to_contain_text(text)
    mine = bob.get_by_role("log").locator(".message.mine")
    expect(mine.locator(".receipt")).to_have_text(["Sent \u2713"] * 3)

    async def read_on_the_phone() -> None:
        async with connect_websocket(ws_url) as phone:
            await phone.call("login", name="alice", password="secret", device="phone")
            bob_id = (await phone.call("find_user", name="bob"))["user"]["id"]
            page = await phone.call("history", **{"with": bob_id})
            second = page["messages"][1]["message_id"]
            await phone.call("read", **{"with": bob_id, "message_id": second})

    trio.run(read_on_the_phone)
    # The receipt reaches bob's page at once: the first two are read.
    expect(mine.locator(".receipt")).to_have_text(["Read \u2713\u2713"] * 2 + ["Sent \u2713"])
    sign_in(alice, "alice", register=False)
    expect(alice.locator("#me-name")).to_have_text("alice")
    # Three waited for this device, but the phone read two of them: the badge says 1.
    expect(bob_in_alice.locator(".badge")).to_have_text("1")
    bob.get_by_label("Message", exact=True).fill("four")
    bob.get_by_label("Message", exact=True).press("Enter")
    expect(bob_in_alice.locator(".badge")).to_have_text("2")  # live

    # Opening the conversation reads it: bob's page shows every message read.
    bob_in_alice.click()
    expect(alice.get_by_role("log")).to_contain_text("four")
    expect(bob_in_alice.locator(".badge")).to_have_count(0)
    expect(mine.locator(".receipt")).to_have_text(["Read \u2713\u2713"] * 4)

    # Typing: bob's keys show on alice's page, and go when he sends.
    bob.get_by_label("Message", exact=True).press_sequentially("typing now")
    expect(alice.locator("#typing")).to_have_text("bob is typing\u2026")
    bob.get_by_label("Message", exact=True).press("Enter")
    expect(alice.get_by_role("log")).to_contain_text("typing now")
    expect(alice.locator("#typing")).to_have_text("")
    expect(mine.locator(".receipt").last).to_have_text("Read \u2713\u2713")  # open: read at once
    assert problems == []
