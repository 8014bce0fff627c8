"""The store: the database is the source of truth for everything a user owns."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from .bulk import Accounts, ImportBlocked, Imported, InUse, NewGroup, NewUser
from .contacts import LoginReads
from .conversations import UNREAD_CAP, ConversationRecord, ReadMarked
from .dialect import Dialect
from .errors import (
    AlreadyBlocked,
    AlreadyFriends,
    AlreadyMember,
    Blocked,
    CannotBlockSelf,
    CannotFriendSelf,
    GroupNameTaken,
    NameTaken,
    NoSuchGroup,
    NoSuchMessage,
    NoSuchUser,
    NotAMember,
    NotBlocked,
    NotFriends,
    RateLimited,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from .migrations import apply_migrations
from .mysql import MysqlDialect
from .names import backfill_name_keys, name_key
from .records import (
    Credentials,
    GroupRecord,
    HistoryMessage,
    HistoryPage,
    LoginSnapshot,
    MemberRecord,
    MembershipRecord,
    Page,
    PresenceAudience,
    StoredMessage,
    UserRecord,
)
from .repository import Store
from .sqlite import SqliteDialect
from .throttle import Window

DEFAULT_DATABASE_URL = "sqlite:///chat.db"


def dialect_for(url: str) -> Dialect:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``mysql://user[:pw]@host[:port]/db``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite://") :]
        if not path.startswith("/") or path == "/":
            raise ValueError(f"{url!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db")
        return SqliteDialect(Path(path[1:]))
    if parts.scheme in ("mysql", "mariadb", "mysql+pymysql"):
        database = parts.path.lstrip("/")
        if not database:
            raise ValueError(f"{url!r}: the URL must name a database, as in mysql://root@host/chat")
        return MysqlDialect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )
    raise ValueError(f"{url!r}: the database URL must start with sqlite:// or mysql://")


def open_store(url: str, pool_size: int | None = None) -> Store:
    """Create the database if needed, apply pending migrations and return a store (blocking)."""
    dialect = dialect_for(url)
    try:
        dialect.prepare_database()
    except Exception as exc:
        if dialect.is_disconnect(exc):
            raise StoreUnavailable(f"cannot reach {dialect.describe()}: {exc}") from exc
        raise
    store = Store(dialect, pool_size)
    store.pool.run_blocking(lambda conn: apply_migrations(dialect, conn))
    # Names written before migration 0004 (or by a node that has not run it yet).
    store.pool.run_blocking(lambda conn: backfill_name_keys(dialect, conn))
    return store


__all__ = [
    "DEFAULT_DATABASE_URL",
    "UNREAD_CAP",
    "Accounts",
    "AlreadyBlocked",
    "AlreadyFriends",
    "AlreadyMember",
    "Blocked",
    "CannotBlockSelf",
    "CannotFriendSelf",
    "ConversationRecord",
    "Credentials",
    "GroupNameTaken",
    "GroupRecord",
    "HistoryMessage",
    "HistoryPage",
    "ImportBlocked",
    "Imported",
    "InUse",
    "LoginReads",
    "LoginSnapshot",
    "MemberRecord",
    "MembershipRecord",
    "NameTaken",
    "NewGroup",
    "NewUser",
    "NoSuchGroup",
    "NoSuchMessage",
    "NoSuchUser",
    "NotAMember",
    "NotBlocked",
    "NotFriends",
    "Page",
    "PresenceAudience",
    "RateLimited",
    "ReadMarked",
    "Store",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "StoredMessage",
    "UserRecord",
    "Window",
    "apply_migrations",
    "backfill_name_keys",
    "dialect_for",
    "name_key",
    "open_store",
]
