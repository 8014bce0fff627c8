-- Protocol 1.2: conversations, read markers (see migrations/mysql/0006_conversations.sql
-- for the why).
CREATE TABLE conversations (
    user_id INTEGER NOT NULL,
    peer_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    read_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, peer_id)
);
CREATE INDEX conversations_by_activity ON conversations (user_id, last_id);

INSERT INTO conversations (user_id, peer_id, last_id, read_id)
SELECT owner, peer, MAX(id), 0
  FROM (SELECT sender_id AS owner, recipient_id AS peer, id FROM messages
         WHERE recipient_id IS NOT NULL
        UNION ALL
        SELECT recipient_id, sender_id, id FROM messages
         WHERE recipient_id IS NOT NULL AND recipient_id <> sender_id) t
 GROUP BY owner, peer;

ALTER TABLE group_members ADD COLUMN read_id INTEGER NOT NULL DEFAULT 0;

CREATE INDEX messages_by_group_sender ON messages (group_id, id, sender_id);
DROP INDEX messages_by_group;
