-- History (protocol 1.1): a page of a conversation reads only that page, newest or oldest
-- first, from one index range per direction. A one-to-one conversation is two ranges:
-- A to B and B to A, each ordered by id.
CREATE INDEX messages_by_pair ON messages (sender_id, recipient_id, id);
CREATE INDEX messages_to_pair ON messages (recipient_id, sender_id, id);
CREATE INDEX messages_by_group ON messages (group_id, id);

-- Session tokens: only a SHA-256 hash of each token is kept, never the token.
-- last_used slides the 30-day expiry and picks the least recently used token to revoke.
CREATE TABLE login_tokens (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    last_used  INTEGER NOT NULL
);
CREATE INDEX login_tokens_by_user ON login_tokens (user_id, last_used);
