"""``chat-server import-users``: accounts, friendships and groups from JSON lines.

Imports run against real SQLite and MariaDB (``database_url``); what was imported is
then checked the way users meet it, by logging in over TCP to a node on the same
database, and where that cannot tell (batches, shared hashes) by reading the store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from chat.client import ChatError
from chat.server.importing import ImportRefused, import_users, read_plan
from chat.server.passwords import check_hash, hash_password
from chat.store import Accounts, ImportBlocked, NewGroup, NewUser, Store, dialect_for, open_store
from chat.store.bulk import BATCH_ROWS

from .support import client, login, register, running_node


def jsonl(*objects: dict[str, Any]) -> list[str]:
    return [json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects]


async def opened(url: str) -> Store:
    return await trio.to_thread.run_sync(open_store, url)


async def imported(url: str, lines: list[str], **options: Any) -> Any:
    store = await opened(url)
    try:
        return await import_users(store, lines, threads=2, **options)
    finally:
        store.close()


async def refused(url: str, lines: list[str]) -> list[str]:
    """The problems of an import that must write nothing, as ``line N: ...`` strings."""
    with pytest.raises(ImportRefused) as caught:
        await imported(url, lines)
    return [str(problem) for problem in caught.value.problems]


def users_in(url: str) -> list[str]:
    """Every user's name, read with a connection of its own (nothing of the store)."""
    conn = dialect_for(url).connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT name FROM users ORDER BY id")
        rows = cursor.fetchall()
    finally:
        conn.close()
    return [row[0].decode() if isinstance(row[0], bytes) else row[0] for row in rows]


async def test_imported_users_log_in_with_their_friends_and_groups(database_url: str) -> None:
    given = hash_password("hash-pw")
    report = await imported(
        database_url,
        [
            *jsonl(
                {"name": "alice", "password": "s3cret", "friends": ["bob", "carol"]},
                {"name": "bob", "password": "s3cret"},
                {"name": "carol", "password_hash": given, "friends": ["alice"]},
                {"name": "Zoë", "password": "other"},
            ),
            "\n",  # a blank line is skipped
            *jsonl({"group": "tea", "creator": "alice", "members": ["bob", "carol"]}),
        ],
    )
    assert (report.imported.users, report.imported.friendships) == (4, 2)  # alice-carol once
    assert (report.imported.groups, report.imported.memberships) == (1, 3)
    assert (report.passwords, report.hashed, report.given_hashes) == (3, 2, 1)
    async with running_node(database_url) as node, client(node) as c:
        reply = await login(c, "alice", "s3cret")
        assert sorted(f["name"] for f in reply["friends"]) == ["bob", "carol"]
        ((group,),) = [reply["groups"]]
        assert (group["name"], group["description"]) == ("tea", "")
        assert {m["name"]: m["role"] for m in group["members"]} == {
            "alice": "creator",
            "bob": "normal",
            "carol": "normal",
        }
        await c.call("logout")
        assert (await login(c, "carol", "hash-pw"))["user"]["name"] == "carol"
        await c.call("logout")
        reply = await login(c, "bob", "s3cret")
        assert [f["name"] for f in reply["friends"]] == ["alice"]  # both sides of a friendship
        groups = await c.call("groups")
        assert [g["member_count"] for g in groups["groups"]] == [3]
        # The case-folded key was written: a look-alike cannot register.
        with pytest.raises(ChatError) as taken:
            await register(c, "ALICE")
        assert taken.value.code == "name_taken"
        with pytest.raises(ChatError) as taken:
            await c.call("create_group", name="TEA")
        assert taken.value.code == "group_name_taken"
        # So was the look-alike key (protocol 1.2): a Cyrillic a is no way round it.
        with pytest.raises(ChatError) as taken:
            await register(c, "\u0430lice")
        assert taken.value.code == "name_taken"


async def test_a_bad_line_anywhere_writes_nothing(database_url: str) -> None:
    problems = await refused(
        database_url,
        jsonl(
            {"name": "amy", "password": "fine"},
            {"name": "bo\u0007b", "password": "x"},
            {"name": "cy", "pasword": "x"},
        ),
    )
    assert problems == [
        "line 2: name: must not contain control characters (found U+0007)",
        "line 3: pasword: unknown field (a user line takes name, password, password_hash, friends)",
        "line 3: password: required field missing (or give password_hash)",
    ]
    assert users_in(database_url) == []


async def test_what_the_database_holds_is_named_by_line(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as c:
        await register(c, "Bob")
        await login(c, "Bob")
        await c.call("create_group", name="Tea")
    problems = await refused(
        database_url,
        jsonl(
            {"name": "amy", "password": "x", "friends": ["Bob"]},  # an existing user: fine
            {"name": "bob", "password": "x"},
            {"name": "cy", "password": "x", "friends": ["nobody"]},
            {"group": "tea", "creator": "amy"},
            {"group": "cakes", "creator": "ghost", "members": ["amy", "phantom"]},
        ),
    )
    assert problems == [
        "line 2: name: 'bob' is taken",
        "line 3: friends: no user is called 'nobody' (in this file or the database)",
        "line 4: group: a group is called 'tea' already",
        "line 5: creator: no user is called 'ghost' (in this file or the database)",
        "line 5: members: no user is called 'phantom' (in this file or the database)",
    ]
    assert users_in(database_url) == ["Bob"]


async def test_users_already_in_the_database_can_be_friends_and_members(
    database_url: str,
) -> None:
    async with running_node(database_url) as node, client(node) as c:
        await register(c, "olga")
    await imported(
        database_url,
        jsonl(
            {"name": "pete", "password": "x", "friends": ["olga"]},
            {"group": "knit", "creator": "olga", "members": ["pete"]},
        ),
    )
    async with running_node(database_url) as node, client(node) as c:
        reply = await login(c, "olga")
        assert [f["name"] for f in reply["friends"]] == ["pete"]
        assert [(g["name"], g["role"]) for g in reply["groups"]] == [("knit", "creator")]


async def test_more_rows_than_one_batch(database_url: str) -> None:
    """Users, friendships and members beyond ``BATCH_ROWS`` go in several statements;
    one password for all of them is hashed once."""
    count = BATCH_ROWS + 7
    names = [f"u{n:05d}" for n in range(count)]
    lines = jsonl(
        {"name": "hub", "password": "same", "friends": names},
        *({"name": name, "password": "same"} for name in names),
        {"group": "all", "creator": "hub", "members": names},
    )
    report = await imported(database_url, lines)
    assert report.hashed == 1
    assert report.imported.friendships == count
    assert report.imported.memberships == count + 1
    store = await opened(database_url)
    try:
        hub = await store.credentials_by_name("hub")
        last = await store.credentials_by_name(names[-1])
        assert hub is not None and last is not None
        assert hub.password_hash == last.password_hash  # the distinct password, hashed once
        friends = await store.friends(hub.id, 0, count + 1)
        assert sorted(f.name for f in friends.items) == names
        groups = await store.groups(last.id, 0, 10)
        assert [(g.group.name, g.member_count) for g in groups.items] == [("all", count + 1)]
    finally:
        store.close()
    assert len(users_in(database_url)) == count + 1


async def test_the_store_checks_again_in_its_transaction(database_url: str) -> None:
    """A name taken after the import was checked (while it hashed): nothing is written."""
    store = await opened(database_url)
    try:
        await store.create_user("dora", hash_password("x"))
        with pytest.raises(ImportBlocked) as blocked:
            await store.import_accounts(Accounts(users=(NewUser("eve", "h"), NewUser("DORA", "h"))))
        assert blocked.value.in_use.user_names == {"DORA"}
    finally:
        store.close()
    assert users_in(database_url) == ["dora"]


async def test_check_only_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    assert await imported(url, jsonl({"name": "amy", "password": "x"}), check_only=True) is None
    assert users_in(url) == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 1: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        ("[1]", "line 1: must be a JSON object"),
        (
            '{"password": "x"}',
            "line 1: name, group: give name (a user line) or group (a group line)",
        ),
        ('{"name": "", "password": "x"}', "line 1: name: must be 1 to 50 characters long, not 0"),
        ('{"name": " a", "password": "x"}', "line 1: name: must not begin or end with white space"),
        ('{"name": 5, "password": "x"}', "line 1: name: must be a string, not a number"),
        (
            '{"name": "a", "password": ""}',
            "line 1: password: must be 1 to 1024 characters long, not 0",
        ),
        (
            '{"name": "a", "password": "x", "password_hash": "y"}',
            "line 1: password, password_hash: give only one of them",
        ),
        (
            '{"name": "a", "password_hash": "md5$abc"}',
            "line 1: password_hash: must be scrypt$N$r$p$SALT$KEY, as the server writes it",
        ),
        (
            '{"name": "a", "password": "x", "friends": "b"}',
            "line 1: friends: must be a list of user names",
        ),
        (
            '{"name": "a", "password": "x", "friends": ["b", ""]}',
            "line 1: friends[1]: must be a user name (a non-empty string)",
        ),
        (
            '{"name": "a", "password": "x", "friends": ["a"]}',
            "line 1: friends: 'a' cannot be their own friend",
        ),
        ('{"group": "g"}', "line 1: creator: required field missing (a user name)"),
        (
            '{"group": "g", "creator": "a", "description": "' + "d" * 201 + '"}',
            "line 1: description: must be 0 to 200 characters long, not 201",
        ),
        (
            '{"group": "g", "creator": "a", "description": "tea", "friends": []}',
            "line 1: friends: unknown field"
            " (a group line takes group, creator, members, description)",
        ),
    ],
)
def test_each_bad_line_is_named_with_its_field(line: str, problem: str) -> None:
    with pytest.raises(ImportRefused) as caught:
        read_plan([line])
    assert [str(p) for p in caught.value.problems] == [problem]


def test_a_name_twice_in_the_file_is_a_problem_of_the_later_line() -> None:
    lines = jsonl(
        {"name": "Ann", "password": "x"},
        {"group": "g", "creator": "Ann"},
        {"name": "ann", "password": "x"},
        {"group": "G", "creator": "Ann"},
    )
    with pytest.raises(ImportRefused) as caught:
        read_plan(lines)
    assert [str(p) for p in caught.value.problems] == [
        "line 3: name: 'ann' is already a user on line 1 (as 'Ann')",
        "line 4: group: 'G' is already a group on line 2 (as 'g')",
    ]


def test_lookalike_names_in_one_file_are_a_problem_too() -> None:
    lines = jsonl(
        {"name": "alice", "password": "x"},
        {"name": "\u0430lice", "password": "x"},
        {"name": "\u2800", "password": "x"},
    )
    with pytest.raises(ImportRefused) as caught:
        read_plan(lines)
    problems = [str(p) for p in caught.value.problems]
    assert problems[0] == "line 2: name: '\u0430lice' is already a user on line 1 (as 'alice')"
    assert problems[1].startswith("line 3: name: ") and "U+2800" in problems[1]


def test_names_are_stored_as_register_stores_them() -> None:
    """NFC, as the codec gives it to ``register``: a decomposed é becomes one character."""
    plan = read_plan(jsonl({"name": "Zoe\u0301", "password": "x", "friends": ["Ame\u0301lie"]}))
    (user,) = plan.users
    assert (user.name, user.friends) == ("Zo\u00e9", ("Am\u00e9lie",))


def test_hashes_in_the_servers_format_are_accepted_and_others_refused() -> None:
    made = hash_password("pw")
    assert check_hash(made) == made
    n, r, p, salt, key = made.split("$")[1:]
    for bad in (
        "",
        f"scrypt${n}${r}${p}${salt}",
        f"bcrypt${n}${r}${p}${salt}${key}",
        f"scrypt$1000${r}${p}${salt}${key}",  # N not a power of 2
        f"scrypt$1048576${r}${p}${salt}${key}",  # more memory than the server allows
        f"scrypt${n}${r}${p}${salt}$AAAA",  # a key of the wrong length
        f"scrypt${n}${r}${p}$!!!${key}",
    ):
        with pytest.raises(ValueError):
            check_hash(bad)


def test_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(jsonl({"name": "amy", "password": "x"}, {"name": "bo", "password": "x"}))
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "".join(jsonl({"name": "cy", "password": "x"}, {"name": "amy", "password": "x"}))
    )

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chat", "import-users", *args, "--database", url],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    checked = run(str(good), "--check")
    assert checked.returncode == 0, checked.stderr
    assert "2 users and 0 groups can be imported" in checked.stdout
    done = run(str(good))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 2 users, 0 friendships and 0 groups"), done.stdout
    again = run(str(bad))
    assert again.returncode == 1
    assert again.stderr.splitlines()[-2:] == [
        f"{bad}: line 2: name: 'amy' is taken",
        f"{bad}: nothing was imported",
    ]
    piped = run("-", stdin="".join(jsonl({"name": "dee", "password": "x"})))
    assert piped.returncode == 0, piped.stderr
    missing = run(str(tmp_path / "nothing.jsonl"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


async def test_an_existing_member_of_an_imported_group_gets_its_messages(
    database_url: str,
) -> None:
    """An imported group naming a user who already has a device: that device follows the
    group from the start, as after a join (found in review: it never got its messages)."""
    async with running_node(database_url) as node:
        async with client(node) as bob:
            await register(bob, "bob")
            await login(bob, "bob")  # bob's device "" is known now
            await bob.call("logout")
        store = node.services.store
        secret = (await store.credentials_by_name("bob")).password_hash  # type: ignore[union-attr]
        await store.import_accounts(
            Accounts(
                users=(NewUser("alice", secret),),
                groups=(NewGroup("imported", "", "alice", ("bob",)),),
            )
        )
        async with client(node) as alice:
            await login(alice, "alice")
            (group,) = (await alice.call("groups"))["groups"]
            sent = await alice.call("group_send", group_id=group["id"], text="to the group")
        async with client(node) as bob:
            reply = await login(bob, "bob")
            assert reply["offline"] == 1, reply
            assert (await bob.next_event())["message_id"] == sent["message_id"]
