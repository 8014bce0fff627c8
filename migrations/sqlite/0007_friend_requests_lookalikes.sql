-- Protocol 1.2: names that look like other names, and friend requests with approval.

-- look_key: the SHA-256 of the UTS #39 confusable skeleton of a name's NFKC case-folded
-- form (chat.protocol.lookalike). "ａｌｉｃｅ" and "аlice" (Cyrillic а) share alice's key,
-- and the UNIQUE index refuses the second such name whichever node inserts it. SQL
-- cannot compute skeletons: the store fills the key of older rows when it starts
-- (chat.store.names), the lowest id of a look-alike set getting it; the others keep NULL
-- and keep working (a UNIQUE index allows many NULLs).
ALTER TABLE users ADD COLUMN look_key BLOB;
CREATE UNIQUE INDEX users_by_look_key ON users (look_key);
ALTER TABLE users ADD COLUMN friend_requests TEXT NOT NULL DEFAULT 'anyone';
ALTER TABLE chat_groups ADD COLUMN look_key BLOB;
CREATE UNIQUE INDEX groups_by_look_key ON chat_groups (look_key);

-- requester_id asked target_id to be friends, and target_id (whose setting is "approve")
-- has not answered. The id orders a target's requests by age: beyond 1,000 waiting,
-- the oldest is dropped (friend_requests_by_age). The pair key lists a target's
-- requests by requester id and answers "did B ask A?" in one probe.
CREATE TABLE friend_requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    target_id    INTEGER NOT NULL REFERENCES users(id),
    requester_id INTEGER NOT NULL REFERENCES users(id),
    created_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX friend_requests_pair ON friend_requests (target_id, requester_id);
CREATE INDEX friend_requests_by_age ON friend_requests (target_id, id);
CREATE INDEX friend_requests_by_requester ON friend_requests (requester_id);
