-- Protocol 1.2: conversations, read markers (chat.store.conversations).
--
-- A user's one-to-one conversations, one row per user and peer (both directions of a
-- conversation have a row, one for each of its two users; a user's notes to self one):
-- `last_id`, the newest message in it, kept up to date by every direct send (one
-- statement per batch of sends), so listing a user's conversations newest first is one
-- range of `conversations_by_activity`, whatever the number of messages. `read_id` is
-- the user's read marker (0: none). No foreign keys: every row follows from messages
-- that carry them, and a send must not take more locks than its message does.
CREATE TABLE conversations (
    user_id BIGINT NOT NULL,
    peer_id BIGINT NOT NULL,
    last_id BIGINT NOT NULL,
    read_id BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, peer_id),
    KEY conversations_by_activity (user_id, last_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO conversations (user_id, peer_id, last_id, read_id)
SELECT owner, peer, MAX(id), 0
  FROM (SELECT sender_id AS owner, recipient_id AS peer, id FROM messages
         WHERE recipient_id IS NOT NULL
        UNION ALL
        SELECT recipient_id, sender_id, id FROM messages
         WHERE recipient_id IS NOT NULL AND recipient_id <> sender_id) t
 GROUP BY owner, peer;

-- A member's read marker in a group: one per membership, never one per message. A
-- group's newest message is read from the index below, so a group send writes nothing
-- here.
ALTER TABLE group_members ADD COLUMN read_id BIGINT NOT NULL DEFAULT 0;

-- Unread in a group: messages above the marker from others, counted (at most 999) from
-- the index alone. It replaces messages_by_group (group_id), which is its prefix.
CREATE INDEX messages_by_group_sender ON messages (group_id, id, sender_id);
DROP INDEX messages_by_group ON messages;
