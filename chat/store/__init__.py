"""The store: the database is the source of truth for everything a user owns."""

from __future__ import annotations

from .bulk import Accounts, ImportBlocked, Imported, InUse, NewGroup, NewUser
from .config import DatabaseConfig, HostPort, MysqlConfig, SqliteConfig, parse_database_url
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
    NoSuchRequest,
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
from .names import backfill_name_keys, look_key, name_key
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
from .requests import FriendAdd
from .sqlite import SqliteDialect
from .throttle import Window

DEFAULT_DATABASE_URL = "sqlite:///chat.db"


def dialect_for(database: DatabaseConfig | str) -> Dialect:
    """The dialect of a parsed configuration, or of a URL (``parse_database_url``):
    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``mysql://user[:pw]@host[:port][,host[:port]...]/db``."""
    config = parse_database_url(database) if isinstance(database, str) else database
    if isinstance(config, SqliteConfig):
        return SqliteDialect(config.path)
    return MysqlDialect(config)


def open_store(database: DatabaseConfig | str, pool_size: int | None = None) -> Store:
    """Create the database if needed, apply pending migrations and return a store (blocking)."""
    dialect = dialect_for(database)
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
    "DatabaseConfig",
    "FriendAdd",
    "GroupNameTaken",
    "GroupRecord",
    "HistoryMessage",
    "HistoryPage",
    "HostPort",
    "ImportBlocked",
    "Imported",
    "InUse",
    "LoginReads",
    "LoginSnapshot",
    "MemberRecord",
    "MembershipRecord",
    "MysqlConfig",
    "NameTaken",
    "NewGroup",
    "NewUser",
    "NoSuchGroup",
    "NoSuchMessage",
    "NoSuchRequest",
    "NoSuchUser",
    "NotAMember",
    "NotBlocked",
    "NotFriends",
    "Page",
    "PresenceAudience",
    "RateLimited",
    "ReadMarked",
    "SqliteConfig",
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
    "look_key",
    "name_key",
    "open_store",
    "parse_database_url",
]
