"""Session tokens in the database: only their SHA-256 hashes, never the tokens.

The database is the source of truth, so a token revoked here is revoked on every
node at once: no node caches tokens. A token is valid while it was used (or
issued) within ``TOKEN_TTL_MS``; each use moves that window (a sliding expiry).
A user keeps at most ``MAX_TOKENS_PER_USER`` live tokens: issuing one more
revokes the least recently used ones. Expired tokens are deleted when met (a use,
or the next issue for the same user).
"""

from __future__ import annotations

from collections.abc import Sequence

from .records import UserRecord, text
from .sql import Sql

TOKEN_TTL_MS = 30 * 24 * 3600 * 1000
"""A token stays valid this long after it was last used."""
MAX_TOKENS_PER_USER = 20


def issue(sql: Sql, user_id: int, device: str, token_hash: bytes, now: int) -> None:
    """Keep a new token's hash, for the device whose login it was issued to; revoke the
    user's expired and least recently used ones."""
    # Issues for one user run one at a time (the user's row is locked on MySQL; SQLite
    # writers are serial): two concurrent ones must not each keep 20 of their own view.
    sql.one(f"SELECT id FROM users WHERE id = ?{sql.dialect.for_update}", (user_id,))
    sql.execute(
        "INSERT INTO login_tokens (token_hash, user_id, device, created_at, last_used)"
        " VALUES (?, ?, ?, ?, ?)",
        (token_hash, user_id, device, now, now),
    )
    others = [
        (bytes(row[0]), int(row[1]))
        for row in sql.all(
            "SELECT token_hash, last_used FROM login_tokens WHERE user_id = ?"
            " ORDER BY last_used DESC",
            (user_id,),
        )
        if bytes(row[0]) != token_hash
    ]
    live = [token for token, last_used in others if now - last_used <= TOKEN_TTL_MS]
    keep = set(live[: MAX_TOKENS_PER_USER - 1])
    _delete(sql, [token for token, _ in others if token not in keep])


def use(sql: Sql, token_hashes: Sequence[bytes], now: int) -> dict[bytes, tuple[UserRecord, str]]:
    """The users (and devices) of those tokens that are live, each token's use recorded;
    expired ones are deleted. Many logins share this one transaction
    (``Store.user_for_token``)."""
    unique = sorted(set(token_hashes))
    marks = ", ".join("?" for _ in unique)
    rows = sql.all(
        "SELECT t.token_hash, t.last_used, u.id, u.name, t.device FROM login_tokens t"
        f" JOIN users u ON u.id = t.user_id WHERE t.token_hash IN ({marks})",
        unique,
    )
    found: dict[bytes, tuple[UserRecord, str]] = {}
    expired: list[bytes] = []
    for row in rows:
        token = bytes(row[0])
        if now - int(row[1]) <= TOKEN_TTL_MS:
            found[token] = (UserRecord.from_row(row[2:4]), text(row[4]))
        else:
            expired.append(token)
    if found:
        live = sorted(found)
        sql.execute(
            "UPDATE login_tokens SET last_used = ?"
            f" WHERE token_hash IN ({', '.join('?' for _ in live)})",
            (now, *live),
        )
    _delete(sql, expired)
    return found


def revoke(sql: Sql, token_hash: bytes) -> None:
    _delete(sql, [token_hash])


def revoke_all(sql: Sql, user_id: int) -> None:
    sql.execute("DELETE FROM login_tokens WHERE user_id = ?", (user_id,))


def _delete(sql: Sql, token_hashes: Sequence[bytes]) -> None:
    if token_hashes:
        marks = ", ".join("?" for _ in token_hashes)
        sql.execute(f"DELETE FROM login_tokens WHERE token_hash IN ({marks})", token_hashes)
