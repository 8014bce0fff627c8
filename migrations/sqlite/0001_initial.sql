-- Users, friends, groups, messages and the per-recipient delivery queue.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

-- Friendship is mutual and stored in both directions, so "friends of X" is one index range.
CREATE TABLE friends (
    user_id    INTEGER NOT NULL REFERENCES users(id),
    friend_id  INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

CREATE TABLE chat_groups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    description TEXT    NOT NULL,
    creator_id  INTEGER NOT NULL REFERENCES users(id),
    created_at  INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id  INTEGER NOT NULL REFERENCES chat_groups(id),
    user_id   INTEGER NOT NULL REFERENCES users(id),
    role      TEXT    NOT NULL CHECK (role IN ('creator', 'normal')),
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);

-- Every accepted message, kept as history. (sender_id, cid) makes a retried send idempotent.
CREATE TABLE messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id    INTEGER NOT NULL REFERENCES users(id),
    recipient_id INTEGER REFERENCES users(id),
    group_id     INTEGER REFERENCES chat_groups(id),
    body         TEXT    NOT NULL,
    ts           INTEGER NOT NULL,
    cid          TEXT,
    CHECK ((recipient_id IS NULL) <> (group_id IS NULL))
);
CREATE UNIQUE INDEX messages_by_cid ON messages (sender_id, cid);

-- One row per (recipient, message) not yet written to the recipient's connection.
CREATE TABLE deliveries (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    message_id INTEGER NOT NULL REFERENCES messages(id)
);
CREATE INDEX deliveries_by_user ON deliveries (user_id, seq);
