-- History (protocol 1.1): a page of a conversation reads only that page, newest or oldest
-- first, from one index range per direction. A one-to-one conversation is two ranges:
-- A to B and B to A, each ordered by id. (InnoDB appends the primary key to every
-- secondary index, so messages_by_group (group_id) already reads a group in id order.)
CREATE INDEX messages_by_pair ON messages (sender_id, recipient_id, id);
-- Replaces messages_by_recipient (recipient_id), which this one covers for the foreign key.
CREATE INDEX messages_to_pair ON messages (recipient_id, sender_id, id);
DROP INDEX messages_by_recipient ON messages;

-- Session tokens: only a SHA-256 hash of each token is kept, never the token.
-- last_used slides the 30-day expiry and picks the least recently used token to revoke.
CREATE TABLE login_tokens (
    token_hash BINARY(32) NOT NULL PRIMARY KEY,
    user_id    BIGINT     NOT NULL,
    created_at BIGINT     NOT NULL,
    last_used  BIGINT     NOT NULL,
    KEY login_tokens_by_user (user_id, last_used),
    CONSTRAINT login_tokens_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
