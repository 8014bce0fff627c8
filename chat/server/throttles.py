"""Throttling: what keeps a password from being guessed as fast as the server hashes,
and one connection or one address from taking the node for itself.

Four limits, each answered with ``rate_limited`` and ``retry_after_ms`` (the
request is refused unprocessed):

- **password guessing, per account** (the protocol's rule): after
  ``PASSWORD_GUESSES`` failed password logins for one name or id within
  ``PASSWORD_WINDOW_MS``, password logins for it are refused, before the
  password is checked, until that long after the last failure. Counted in the
  database (``chat.store.throttle``, the table ``add_friend`` uses too), which
  every node of a cluster shares: the limit is cluster-wide. An attempt counts
  from the moment it passes the check (and is forgotten if the password was
  right), so a burst of simultaneous guesses gets no more than five through
  (give or take one per pooled database connection). A name that exists
  counts for its user id too (and an id for itself), so alternating ``name`` and
  ``id`` buys no extra guesses; names and ids that do not exist are counted all
  the same, so the answer reveals nothing.
- **per client address**: password logins and ``register`` from one address,
  ``Settings.address_logins_per_minute`` per minute (cluster-wide, same table).
  Addresses in ``Settings.trusted_addresses`` (default: loopback) are exempt, so
  load tests and a proxy without the PROXY protocol keep working.
- **the hashing queue**: at most ``Settings.hash_queue`` password hashes may be
  running or waiting on a node (``PasswordHasher``); a password request beyond
  that is refused at once instead of waiting behind a flood. Requests from
  trusted addresses queue without that bound (a load test logging in a thousand
  users at once is the operator's own), but count towards it.
- **per connection**: a token bucket (``RequestBudget``) far above what any
  honest client sends; it protects the node, not an account.

Token logins (issue 10) never go through ``authenticate_password``: it is the only
place the password throttle lives.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Sequence
from functools import cache

import trio

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import Login
from chat.store import Credentials, StoreError, Window
from chat.store.sql import now_ms

from .passwords import RECENT_LOGIN_MS, HashingBusy
from .services import Services

log = logging.getLogger(__name__)

PASSWORD_GUESSES = 5
PASSWORD_WINDOW_MS = 60_000
PASSWORD_WINDOW = Window(limit=PASSWORD_GUESSES, span_ms=PASSWORD_WINDOW_MS)
"""The protocol's rule: 5 failed password logins per name or id within 60 s."""
ADDRESS_WINDOW_MS = 60_000
HASHING_RETRY_MS = 1_000
"""What a password request refused for a full hashing queue is told to wait."""


class RateLimitedError(RequestError):
    """``rate_limited``, with the limit that refused (a metrics label)."""

    def __init__(self, limit: str, retry_after_ms: int, what: str) -> None:
        seconds = -(-retry_after_ms // 1000)
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"{what}; try again in {seconds} s",
            retry_after_ms=retry_after_ms,
        )
        self.limit = limit


# --- password logins ---------------------------------------------------------------


def _name_bucket(name: str) -> str:
    # A name may be any string up to a frame long: the bucket holds its digest.
    return "login:name:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _id_bucket(user_id: int) -> str:
    return f"login:id:{user_id}"


async def authenticate_password(services: Services, request: Login, address: str) -> Credentials:
    """The checks of a password login, all before the password is compared: the address
    budget, the account's guessing throttle, the hashing queue; then the password
    itself. Returns the user's credentials, or raises ``rate_limited`` or
    ``bad_credentials`` (the same whatever was wrong). A wrong password counts against
    the name (or id) sent and the account it names.

    A refusal caused by others' load (the hashing queue is full) counts against
    neither the address nor the account: the queue is asked before either is counted,
    and if it fills up meanwhile, both are forgotten again. Checks of accounts used
    recently go before the others (``PasswordHasher``): the account is looked up
    first to know that."""
    trusted = is_trusted(address, services.settings.trusted_addresses)
    _refuse_if_address_shut(services, address)
    hasher = services.hasher
    if hasher.full(
        bounded=not trusted,
        preferred=hasher.recent.knows(name=request.name, user_id=request.id),
    ):
        raise _hashing_busy()  # before any database work: a flood costs nothing more
    store = services.store
    if request.name is not None:
        _refuse_if_known_shut(services, [_name_bucket(request.name)])
        credentials = await store.credentials_by_name(request.name)
        buckets = [_name_bucket(request.name)]
        if credentials is not None:
            buckets.append(_id_bucket(credentials.id))
    else:
        assert request.id is not None  # the codec checked: exactly one of name and id
        _refuse_if_known_shut(services, [_id_bucket(request.id)])
        credentials = await store.credentials_by_id(request.id)
        buckets = [_id_bucket(request.id)]
    _refuse_if_known_shut(services, buckets)
    preferred = credentials is not None and recently_used(credentials)
    if preferred:
        assert credentials is not None
        hasher.recent.note(credentials.id, credentials.name)
    if hasher.full(bounded=not trusted, preferred=preferred):
        raise _hashing_busy()  # nothing counted yet
    counted = await spend_address_budget(services, address)
    # Counted as a failure from now on, so that guesses sent at the same moment cannot
    # all get through while the first ones are being hashed; forgotten if it was right.
    try:
        reservation = await store.throttle_reserve(buckets, PASSWORD_WINDOW)
    except BaseException:
        await _unreserve(services, counted)
        raise
    if reservation.wait_ms is not None:
        for bucket in buckets:
            services.lockouts.shut(bucket, reservation.wait_ms)
        raise _account_locked(reservation.wait_ms)
    stored_hash = credentials.password_hash if credentials else None
    assert request.password is not None  # the codec checked: a password login has one
    try:
        matches = await hasher.verify(
            request.password,
            stored_hash,
            bounded=not trusted,
            preferred=preferred,
            address=address,
        )
    except BaseException as exc:
        # Not checked after all (a full queue, a cancelled request): it does not count
        # against the account; nor against the address if others' load refused it.
        busy = isinstance(exc, HashingBusy)
        await _unreserve(services, (*reservation.ids, *(counted if busy else ())))
        if busy:
            raise _hashing_busy() from None
        raise
    if credentials is not None and matches:
        await _unreserve(services, reservation.ids)
        hasher.recent.note(credentials.id, credentials.name)
        return credentials
    services.metrics.login_failures.inc()
    # The same answer whichever part was wrong: it must not reveal which names exist.
    raise RequestError(ErrorCode.BAD_CREDENTIALS, "wrong user or password")


def recently_used(credentials: Credentials) -> bool:
    """A device of the account was seen within ``RECENT_LOGIN_MS``: its password checks
    go first."""
    last = credentials.last_login_ms
    return last is not None and now_ms() - last < RECENT_LOGIN_MS


def _refuse_if_known_shut(services: Services, buckets: Sequence[str]) -> None:
    """Refuse from memory what the database said is shut (``Lockouts``)."""
    waits = [w for b in buckets if (w := services.lockouts.wait_ms(b)) is not None]
    if waits:
        raise _account_locked(max(waits))


def _account_locked(wait_ms: int) -> RateLimitedError:
    return RateLimitedError("password", wait_ms, "too many failed logins for this account")


async def _unreserve(services: Services, ids: Sequence[int]) -> None:
    """Forget a reservation, also while the request is being cancelled. If that fails,
    the attempt stays counted as a failure: on the safe side."""
    with trio.move_on_after(services.settings.close_grace_seconds, shield=True):
        try:
            await services.store.throttle_forget(ids)
        except StoreError as exc:
            log.warning("a password attempt stays counted: %s", exc)


async def hash_new_password(services: Services, password: str, address: str) -> str:
    """``register``'s hash, after the address budget and within the hashing queue."""
    trusted = is_trusted(address, services.settings.trusted_addresses)
    _refuse_if_address_shut(services, address)
    if services.hasher.full(bounded=not trusted):
        raise _hashing_busy()  # nothing counted yet
    counted = await spend_address_budget(services, address)
    try:
        return await services.hasher.hash(password, bounded=not trusted, address=address)
    except HashingBusy:
        await _unreserve(services, counted)  # others' load refused it: it does not count
        raise _hashing_busy() from None


def _hashing_busy() -> RateLimitedError:
    return RateLimitedError(
        "hashing", HASHING_RETRY_MS, "the server is checking too many passwords right now"
    )


# --- client addresses ------------------------------------------------------------------


def _address_bucket(address: str) -> str:
    return f"address:{address}"


def _refuse_if_address_shut(services: Services, address: str) -> None:
    """Refuse from memory an address the database said is over its budget."""
    wait = services.lockouts.wait_ms(_address_bucket(address))
    if wait is not None:
        raise _address_over(wait)


async def spend_address_budget(services: Services, address: str) -> tuple[int, ...]:
    """Count one password request against ``address``'s budget, or refuse it. Returns
    the event counted (none for a trusted address), to forget it if the request is then
    refused for others' load."""
    settings = services.settings
    per_minute = settings.address_logins_per_minute
    if per_minute <= 0 or is_trusted(address, settings.trusted_addresses):
        return ()
    bucket = _address_bucket(address)
    _refuse_if_address_shut(services, address)
    window = Window(limit=per_minute, span_ms=ADDRESS_WINDOW_MS)
    counted = await services.store.throttle_take_counted(bucket, window)
    if counted.wait_ms is not None:
        services.lockouts.shut(bucket, counted.wait_ms)
        raise _address_over(counted.wait_ms)
    return counted.ids


def _address_over(wait_ms: int) -> RateLimitedError:
    return RateLimitedError("address", wait_ms, "too many logins and registrations from here")


def is_trusted(address: str, trusted: Sequence[str]) -> bool:
    """Whether ``address`` (an IP address, as the transport reports it) is in one of the
    ``trusted`` networks. Something that is not an IP address (a test's memory stream)
    is not trusted."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _networks(tuple(trusted)))


@cache
def _networks(trusted: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(text, strict=False) for text in trusted]


def parse_networks(text: str) -> tuple[str, ...]:
    """``--trusted-addresses``: comma-separated addresses or networks (CIDR); empty: none.
    Raises ``ValueError`` naming the bad one."""
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or network") from None
    return parts


# --- one connection ----------------------------------------------------------------------


class RequestBudget:
    """A token bucket per connection: ``rate`` requests per second on average, bursts
    of ``burst``. A request that finds it empty is refused with the time until the
    next token. ``rate`` 0 turns it off."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._at = trio.current_time() if rate > 0 else 0.0

    def spend(self) -> None:
        if self.rate <= 0:
            return
        now = trio.current_time()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return
        wait_ms = max(1, int((1 - self._tokens) / self.rate * 1000) + 1)
        raise RateLimitedError("connection", wait_ms, "too many requests on this connection")
