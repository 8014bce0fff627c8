-- Version 1.1: case-insensitive names, member counts, blocking, and the request throttle.
-- Nothing here reads or depends on migration 0003 (history and tokens).

-- A name's case-folded NFC form. New names must not share it ("Bob" vs "bob"), and the
-- unique index, not only a check in Python, enforces that. SQL cannot fold case the way
-- Unicode does, so the store fills the key of rows written before this migration when it
-- starts (chat.store.names); a name that folds like an older one keeps working with a NULL
-- key (a UNIQUE index allows many NULLs), and still blocks new look-alikes through the
-- older name's key.
ALTER TABLE users ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX users_by_name_key ON users (name_key);

-- member_count: a login shows the size of a group whose member list it cuts; counting
-- 2,000-member groups at every login would cost more than the login itself.
ALTER TABLE chat_groups ADD COLUMN name_key TEXT;
ALTER TABLE chat_groups ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX groups_by_name_key ON chat_groups (name_key);

UPDATE chat_groups
   SET member_count = (SELECT COUNT(*) FROM group_members gm WHERE gm.group_id = chat_groups.id);

-- blocker_id has blocked blocked_id. "Has X blocked me?" on every send is one index probe.
CREATE TABLE blocks (
    blocker_id INTEGER NOT NULL REFERENCES users(id),
    blocked_id INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked_id, blocker_id);

-- Sliding-window throttles (chat.store.throttle): one row per counted event of a bucket
-- (such as "add_friend:42"), pruned as the window passes. In the database because the
-- database is what every node of a cluster shares, including a single embedded node.
CREATE TABLE rate_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT    NOT NULL,
    at     INTEGER NOT NULL
);
CREATE INDEX rate_events_by_bucket ON rate_events (bucket, at);
