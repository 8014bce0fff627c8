"""Many accounts at once (``chat-server import-users``): users, friendships and groups
from JSON lines, checked as ``register`` and ``create_group`` check them, hashed as
``register`` hashes, written by the store in one transaction.

The file has one JSON object per line (blank lines are skipped)::

    {"name": "alice", "password": "s3cret", "friends": ["bob"]}
    {"name": "bob", "password_hash": "scrypt$16384$8$1$SALT$KEY"}
    {"group": "tea", "creator": "alice", "members": ["bob"], "description": "Earl Grey"}

- a *user* line has ``name``, and ``password`` or ``password_hash`` (in the format
  ``chat.server.passwords`` writes: a hash made by another server or an earlier
  export), and may list ``friends`` (friendship is mutual: listing it on one side is
  enough);
- a *group* line has ``group`` (its name) and ``creator``, and may have
  ``description`` and ``members`` (the creator is a member with role ``creator``);
- friends, creators and members are user names: of this file, or of users already in
  the database (matched exactly, as ``login`` matches).

It is all or nothing. Every line is checked first and every problem is reported
(``line N: FIELD: what is wrong``); then the database is asked whether a name is
taken (also by one that differs only in case, as ``register`` refuses it) or a
referenced user is missing; only then are passwords hashed and everything written,
in one transaction. A file with any problem writes nothing, so it can be fixed and
imported again.

Hashing is the slow part (scrypt, tens of milliseconds of CPU per hash on purpose):
each distinct password is hashed once, in ``threads`` worker threads (scrypt
releases the GIL). Users given the same password in one import therefore share
one hash (and salt): someone who can read the database sees that their passwords
are equal. Give ``password_hash`` to import hashes made beforehand.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import trio

from chat.protocol.codec import check_description, check_new_name, check_new_password
from chat.store import (
    Accounts,
    ImportBlocked,
    Imported,
    InUse,
    NewGroup,
    NewUser,
    Store,
    look_key,
    name_key,
)

from .passwords import check_hash, hash_password

log = logging.getLogger(__name__)

USER_FIELDS = ("name", "password", "password_hash", "friends")
GROUP_FIELDS = ("group", "creator", "members", "description")
PROGRESS_SECONDS = 5.0
"""How often a long hashing phase logs how far it got."""


@attrs.frozen
class Problem:
    """What is wrong with one line; ``message`` starts with the field's name."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ImportRefused(Exception):
    """The import wrote nothing; ``problems`` says why, line by line (in line order)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__(f"{len(self.problems)} problems, first: {self.problems[0]}")


@attrs.frozen
class UserLine:
    line: int
    name: str
    password: str | None
    password_hash: str | None
    friends: tuple[str, ...]


@attrs.frozen
class GroupLine:
    line: int
    name: str
    description: str
    creator: str
    members: tuple[str, ...]


@attrs.frozen
class Plan:
    """A file that passed every check that needs no database."""

    users: tuple[UserLine, ...]
    groups: tuple[GroupLine, ...]
    friendships: tuple[tuple[str, str, int], ...]
    """Each pair of user names once, with the first line that lists it."""

    def accounts(self, hashes: Mapping[str, str] | None = None) -> Accounts:
        """What to write; ``hashes``: each password's hash (None: to check names only)."""

        def secret(user: UserLine) -> str:
            if user.password_hash is not None:
                return user.password_hash
            assert user.password is not None
            return "" if hashes is None else hashes[user.password]

        return Accounts(
            users=tuple(NewUser(user.name, secret(user)) for user in self.users),
            friendships=tuple((a, b) for a, b, _ in self.friendships),
            groups=tuple(
                NewGroup(g.name, g.description, g.creator, g.members) for g in self.groups
            ),
        )

    def passwords(self) -> list[str]:
        return [user.password for user in self.users if user.password is not None]


@attrs.frozen
class Report:
    imported: Imported
    passwords: int
    """Users given a ``password`` (the others gave ``password_hash``)."""
    hashed: int
    """Distinct passwords hashed."""
    given_hashes: int
    seconds: float
    threads: int

    def __str__(self) -> str:
        done = self.imported
        return (
            f"imported {_count(done.users, 'user')}, {_count(done.friendships, 'friendship')}"
            f" and {_count(done.groups, 'group')} with {_count(done.memberships, 'member')}"
            f" in {self.seconds:.1f} s ({self.hashed} distinct of"
            f" {_count(self.passwords, 'password')} hashed with"
            f" {_count(self.threads, 'thread')}, {_count(self.given_hashes, 'hash', 'hashes')}"
            " given)"
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


# --- reading the file: no database ------------------------------------------------


def read_plan(lines: Iterable[str]) -> Plan:
    """Check every line of a JSON lines file; ``ImportRefused`` lists every problem."""
    problems: list[Problem] = []
    users: list[UserLine] = []
    groups: list[GroupLine] = []
    named: dict[str, list[tuple[int, str]]] = {"name": [], "group": []}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        found = _read_line(number, raw, problems, named)
        if isinstance(found, UserLine):
            users.append(found)
        elif isinstance(found, GroupLine):
            groups.append(found)
    _no_twins(problems, named["name"], "name", "a user")
    _no_twins(problems, named["group"], "group", "a group")
    friendships: dict[frozenset[str], tuple[str, str, int]] = {}
    for user in users:
        for friend in user.friends:
            friendships.setdefault(frozenset((user.name, friend)), (user.name, friend, user.line))
    if problems:
        raise ImportRefused(problems)
    return Plan(tuple(users), tuple(groups), tuple(friendships.values()))


def _read_line(
    number: int, raw: str, problems: list[Problem], named: dict[str, list[tuple[int, str]]]
) -> UserLine | GroupLine | None:
    """One line as a user or a group, or None (its problems added to ``problems``); a
    valid name goes to ``named`` even when the line has other problems."""

    def problem(message: str) -> None:
        problems.append(Problem(number, message))

    try:
        obj = json.loads(raw)
    except ValueError as exc:
        problem(f"not valid JSON ({exc})")
        return None
    if not isinstance(obj, dict):
        problem("must be a JSON object")
        return None
    if ("name" in obj) == ("group" in obj):
        problem("name, group: give name (a user line) or group (a group line)")
        return None
    field, kind, fields = (
        ("name", "user", USER_FIELDS) if "name" in obj else ("group", "group", GROUP_FIELDS)
    )
    for key in obj:
        if key not in fields:
            problem(f"{key}: unknown field (a {kind} line takes {', '.join(fields)})")
    name = _checked(obj, field, check_new_name, problem)
    if name is None:
        return None
    named[field].append((number, name))
    if field == "name":
        return _user(number, name, obj, problem)
    return _group(number, name, obj, problem)


def _user(
    number: int, name: str, obj: Mapping[str, Any], problem: Callable[[str], None]
) -> UserLine | None:
    password = password_hash = None
    if "password" not in obj and "password_hash" not in obj:
        problem("password: required field missing (or give password_hash)")
    elif "password" in obj and "password_hash" in obj:
        problem("password, password_hash: give only one of them")
    elif "password" in obj:
        password = _checked(obj, "password", check_new_password, problem)
    else:
        password_hash = _checked(obj, "password_hash", check_hash, problem)
    friends = _names(obj, "friends", problem)
    if (password is None and password_hash is None) or friends is None:
        return None
    if name in friends:
        problem(f"friends: {name!r} cannot be their own friend")
        return None
    return UserLine(number, name, password, password_hash, friends)


def _group(
    number: int, name: str, obj: Mapping[str, Any], problem: Callable[[str], None]
) -> GroupLine | None:
    description = _checked(obj, "description", check_description, problem, default="")
    creator = None
    if "creator" not in obj:
        problem("creator: required field missing (a user name)")
    else:
        creator = _checked(obj, "creator", _reference, problem)
    members = _names(obj, "members", problem)
    if description is None or creator is None or members is None:
        return None
    return GroupLine(number, name, description, creator, members)


def _checked(
    obj: Mapping[str, Any],
    field: str,
    check: Callable[[object], str],
    problem: Callable[[str], None],
    default: str | None = None,
) -> str | None:
    if field not in obj:
        if default is None:
            problem(f"{field}: required field missing")
        return default
    try:
        return check(obj[field])
    except ValueError as exc:
        problem(f"{field}: {exc}")
        return None


def _reference(value: object) -> str:
    """A user name referred to: matched as written (NFC, as new names are stored)."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a user name (a non-empty string)")
    return unicodedata.normalize("NFC", value)


def _names(
    obj: Mapping[str, Any], field: str, problem: Callable[[str], None]
) -> tuple[str, ...] | None:
    value = obj.get(field, [])
    if not isinstance(value, list):
        problem(f"{field}: must be a list of user names")
        return None
    names: list[str] = []
    for index, item in enumerate(value):
        try:
            names.append(_reference(item))
        except ValueError as exc:
            problem(f"{field}[{index}]: {exc}")
            return None
    return tuple(dict.fromkeys(names))


def _no_twins(
    problems: list[Problem], named: Sequence[tuple[int, str]], field: str, what: str
) -> None:
    """A name twice in the file (also differing only in case, or looking alike) is a
    problem of the later line."""
    first: dict[object, tuple[int, str]] = {}
    for line, name in named:
        keys = (name_key(name), look_key(name))
        earlier_one = next((first[key] for key in keys if key in first), None)
        if earlier_one is not None:
            earlier_line, earlier = earlier_one
            spelt = "" if earlier == name else f" (as {earlier!r})"
            problems.append(
                Problem(line, f"{field}: {name!r} is already {what} on line {earlier_line}{spelt}")
            )
        else:
            for key in keys:
                first[key] = (line, name)


# --- against the database, then the work -----------------------------------------


def blocked_problems(plan: Plan, in_use: InUse) -> list[Problem]:
    """What the database says, as problems of the lines concerned."""
    problems: list[Problem] = []
    known = "no user is called {!r} (in this file or the database)"
    for user in plan.users:
        if user.name in in_use.user_names:
            problems.append(Problem(user.line, f"name: {user.name!r} is taken"))
        for friend in user.friends:
            if friend in in_use.unknown_users:
                problems.append(Problem(user.line, "friends: " + known.format(friend)))
    for group in plan.groups:
        if group.name in in_use.group_names:
            problems.append(Problem(group.line, f"group: a group is called {group.name!r} already"))
        if group.creator in in_use.unknown_users:
            problems.append(Problem(group.line, "creator: " + known.format(group.creator)))
        for member in group.members:
            if member in in_use.unknown_users:
                problems.append(Problem(group.line, "members: " + known.format(member)))
    return problems


async def hash_passwords(passwords: Iterable[str], threads: int) -> dict[str, str]:
    """Each distinct password's hash, made once, ``threads`` at a time."""
    distinct = sorted(set(passwords))
    hashes: dict[str, str] = {}
    todo: Iterator[str] = iter(distinct)
    limiter = trio.CapacityLimiter(threads)
    last_said = trio.current_time()

    async def worker() -> None:
        nonlocal last_said
        for password in todo:
            hashes[password] = await trio.to_thread.run_sync(
                hash_password, password, limiter=limiter
            )
            if trio.current_time() - last_said >= PROGRESS_SECONDS:
                last_said = trio.current_time()
                log.info("hashed %d of %d distinct passwords", len(hashes), len(distinct))

    async with trio.open_nursery() as nursery:
        for _ in range(min(threads, len(distinct))):
            nursery.start_soon(worker)
    return hashes


async def import_plan(
    store: Store, plan: Plan, *, threads: int, check_only: bool = False
) -> Report | None:
    """Import what ``plan`` describes (``check_only``: only check it against the
    database, and return None). ``ImportRefused``: nothing was written."""
    began = time.monotonic()
    problems = blocked_problems(plan, await store.import_in_use(plan.accounts()))
    if problems:
        raise ImportRefused(problems)
    if check_only:
        return None
    passwords = plan.passwords()
    if passwords:
        distinct = _count(len(set(passwords)), "distinct password")
        log.info("hashing %s with %s", distinct, _count(threads, "thread"))
    hashes = await hash_passwords(passwords, threads)
    try:
        imported = await store.import_accounts(plan.accounts(hashes))
    except ImportBlocked as exc:  # someone took a name while we were hashing
        raise ImportRefused(blocked_problems(plan, exc.in_use)) from None
    return Report(
        imported=imported,
        passwords=len(passwords),
        hashed=len(hashes),
        given_hashes=len(plan.users) - len(passwords),
        seconds=time.monotonic() - began,
        threads=threads,
    )


async def import_users(
    store: Store, lines: Iterable[str], *, threads: int, check_only: bool = False
) -> Report | None:
    """``read_plan`` then ``import_plan``: the whole of ``chat-server import-users``."""
    return await import_plan(store, read_plan(lines), threads=threads, check_only=check_only)
