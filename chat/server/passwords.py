"""Salted password hashes (scrypt), computed off the trio thread.

A hash costs about 16 MiB and tens of milliseconds of CPU on purpose, so it
runs in a worker thread under its own limiter: a burst of logins queues there
instead of freezing every connection or exhausting memory.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator

import attrs
import trio

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
RECENT_LOGIN_MS = 30 * 24 * 3600 * 1000
"""An account with a device seen within this long is *known*: its password checks go
before the others (``PasswordHasher``)."""
MAX_MEMORY = 64 * 1024 * 1024
"""scrypt may use this much memory (``maxmem``); stored parameters that need more never verify."""
_PREFIX = "scrypt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=MAX_MEMORY
    )


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$key``: the parameters travel with the hash, so they can change later."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{_PREFIX}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_hash(stored: object) -> str:
    """``stored`` if it is a hash in ``hash_password``'s format that ``verify_password``
    can check (parameters within ``MAX_MEMORY``, a key of ``KEY_BYTES``); else
    ``ValueError`` saying what is wrong. Costs no hashing: for hashes made elsewhere
    (``chat-server import-users``)."""
    if not isinstance(stored, str):
        raise ValueError("must be a string")
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        raise ValueError(f"must be {_PREFIX}$N$r$p$SALT$KEY, as the server writes it")
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("N, r and p must be integers and SALT and KEY base64") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("N must be a power of 2 above 1, r and p at least 1")
    if 128 * r * (n + p + 2) > MAX_MEMORY:  # what OpenSSL's scrypt would need
        raise ValueError(f"N and r need more than the {MAX_MEMORY >> 20} MiB the server allows")
    if not salt or len(key) != KEY_BYTES:
        raise ValueError(f"SALT must not be empty and KEY must be {KEY_BYTES} bytes")
    return stored


def verify_password(password: str, stored: str) -> bool:
    try:
        prefix, n, r, p, salt, key = stored.split("$")
        if prefix != _PREFIX:
            return False
        expected = base64.b64decode(key)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _dummy_hash() -> str:
    """A hash of nothing anyone knows: verifying against it makes "no such user" cost as
    much time as "wrong password", so response times do not reveal which names exist.
    Made on first use (in a worker thread), not at import: it costs a hash."""
    return hash_password(base64.b64encode(os.urandom(24)).decode("ascii"))


def _verify_or_pretend(password: str, stored: str | None) -> bool:
    return verify_password(password, stored if stored is not None else _dummy_hash())


RECENT_ACCOUNTS = 100_000
"""Accounts a node remembers as recently used, at most (the oldest forgotten first)."""


class RecentAccounts:
    """The accounts this node has seen in use lately (a login, or a look-up that found a
    device seen within ``RECENT_LOGIN_MS``), by name and by id: while the hashing queue
    is full, a password login for one of these still goes ahead, and one for anything
    else is refused before any database work (a flood then costs nothing but the
    refusal). A cache in front of the database's answer: an account it does not know is
    looked up while there is room in the queue."""

    def __init__(self, max_entries: int = RECENT_ACCOUNTS) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries

    def note(self, user_id: int, name: str) -> None:
        now = trio.current_time()
        for key in (f"id:{user_id}", f"name:{name}"):
            self._seen[key] = now
            self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def knows(self, *, name: str | None = None, user_id: int | None = None) -> bool:
        key = f"name:{name}" if name is not None else f"id:{user_id}"
        seen = self._seen.get(key)
        return seen is not None and trio.current_time() - seen < RECENT_LOGIN_MS / 1000


class HashingBusy(Exception):
    """The hashing queue is full: the request is refused at once (``rate_limited``)."""


@attrs.define(eq=False)
class _Waiter:
    turn: trio.Event = attrs.field(factory=trio.Event)
    """Set when a hashing slot is handed to it."""


class PasswordHasher:
    """Hashing and checking in worker threads, ``concurrency`` at a time, in an order
    that a flood cannot take over:

    - **known accounts first**: a check for an account used recently (a device of it
      seen within ``RECENT_LOGIN_MS``, ``preferred``) waits only for other such
      checks. A flood of guesses for names nobody uses, from however many addresses,
      never holds it up; a flood aimed at used accounts gets five guesses per account
      per minute (the account throttle, checked before), not the queue.
    - **the rest, fairly per address**: other checks (unknown names, accounts not used
      for a month, ``register``) take turns by client address, one each in turn, so
      one address with many connections gets no more than an address with one.
    - **bounded**: at most ``max_queued`` of the rest running or waiting (0: no
      bound); past that a new one raises ``HashingBusy`` at once, so nobody waits
      behind a flood for seconds. Preferred checks do not count towards it and are
      never refused for it.
    """

    def __init__(self, concurrency: int = 2, max_queued: int = 0) -> None:
        self.max_queued = max_queued
        self.queued = 0
        """Hashes running or waiting now (all of them)."""
        self.others = 0
        """Of those, the ones not preferred (what ``max_queued`` bounds)."""
        self._free = concurrency
        self._threads = trio.CapacityLimiter(concurrency)
        """Never waited for: a task holds a slot (above) before it takes a thread."""
        self._preferred: deque[_Waiter] = deque()
        self.recent = RecentAccounts()
        """Accounts whose checks go first, as far as this node knows without asking."""
        self._by_address: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        """Waiting checks that are not preferred, per address; the first address is next."""

    async def hash(self, password: str, *, bounded: bool = True, address: str = "") -> str:
        async with self.turn(bounded=bounded, preferred=False, address=address):
            return await trio.to_thread.run_sync(hash_password, password, limiter=self._threads)

    async def verify(
        self,
        password: str,
        stored: str | None,
        *,
        bounded: bool = True,
        preferred: bool = False,
        address: str = "",
    ) -> bool:
        """True if ``password`` matches; with ``stored`` None, spends the same time and says
        no. ``bounded`` False: never refused for a full queue (trusted clients)."""
        async with self.turn(bounded=bounded, preferred=preferred, address=address):
            ok = await trio.to_thread.run_sync(
                _verify_or_pretend, password, stored, limiter=self._threads
            )
        return ok and stored is not None

    def full(self, *, bounded: bool = True, preferred: bool = False) -> bool:
        """A request now would raise ``HashingBusy``: callers ask before doing work."""
        return (
            bounded and not preferred and bool(self.max_queued) and self.others >= self.max_queued
        )

    @contextlib.asynccontextmanager
    async def turn(self, *, bounded: bool, preferred: bool, address: str) -> AsyncIterator[None]:
        if self.full(bounded=bounded, preferred=preferred):
            raise HashingBusy(f"{self.queued} password hashes queued")
        self.queued += 1
        self.others += not preferred
        try:
            await self._acquire(preferred, address)
            try:
                yield
            finally:
                self._hand_over()
        finally:
            self.queued -= 1
            self.others -= not preferred

    async def _acquire(self, preferred: bool, address: str) -> None:
        if self._free and not self._preferred and not self._by_address:
            self._free -= 1
            await trio.lowlevel.checkpoint()
            return
        waiter = _Waiter()
        queue = self._preferred if preferred else self._by_address.setdefault(address, deque())
        queue.append(waiter)
        try:
            await waiter.turn.wait()
        except BaseException:
            if waiter.turn.is_set():
                self._hand_over()  # handed a slot while being cancelled: pass it on
            else:
                queue.remove(waiter)
                if not preferred and not queue:
                    del self._by_address[address]
            raise

    def _hand_over(self) -> None:
        """A slot is free: to the first preferred waiter, else to the next address in
        turn (which then goes to the back of the line), else it stays free."""
        if self._preferred:
            self._preferred.popleft().turn.set()
            return
        if self._by_address:
            address, queue = next(iter(self._by_address.items()))
            queue.popleft().turn.set()
            if queue:
                self._by_address.move_to_end(address)
            else:
                del self._by_address[address]
            return
        self._free += 1
