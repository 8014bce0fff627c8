-- Protocol 1.2: several devices per user, and messages kept per device by position,
-- not by a row per recipient (chat.store.streams, docs/architecture.md "Delivery").
--
-- Every message belongs to one stream: its recipient's inbox (a one-to-one message) or
-- its group's log. A stream numbers its messages 1, 2, 3, ... in `pos`, handed out under
-- the stream owner's row lock (users.inbox_head, chat_groups.log_head), so positions of
-- one stream commit in increasing order: once a position is seen committed, every lower
-- one is too, and "everything after P" never skips a message that commits late (which
-- AUTO_INCREMENT ids cannot promise across concurrent transactions).
ALTER TABLE users
    ADD COLUMN inbox_head BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN devices_since BIGINT NULL;
ALTER TABLE chat_groups ADD COLUMN log_head BIGINT NOT NULL DEFAULT 0;
-- Where a member joined a group's log: a user's very first device gets the group's
-- messages from there (as version 1 kept them for a member who never logged in).
ALTER TABLE group_members ADD COLUMN joined_pos BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN pos BIGINT NULL;

UPDATE messages m
  JOIN (SELECT id, ROW_NUMBER() OVER (PARTITION BY recipient_id ORDER BY id) AS n
          FROM messages WHERE recipient_id IS NOT NULL) r ON r.id = m.id
   SET m.pos = r.n;
UPDATE messages m
  JOIN (SELECT id, ROW_NUMBER() OVER (PARTITION BY group_id ORDER BY id) AS n
          FROM messages WHERE group_id IS NOT NULL) r ON r.id = m.id
   SET m.pos = r.n;
UPDATE users u
   SET inbox_head = (SELECT COALESCE(MAX(m.pos), 0) FROM messages m WHERE m.recipient_id = u.id);
UPDATE chat_groups g
   SET log_head = (SELECT COALESCE(MAX(m.pos), 0) FROM messages m WHERE m.group_id = g.id);

CREATE UNIQUE INDEX messages_by_inbox ON messages (recipient_id, pos);
CREATE UNIQUE INDEX messages_by_log ON messages (group_id, pos);

-- A device of a user (`device` '' is the one of logins without a device name): known
-- from its first login until forgotten or unseen for 30 days. `inbox_pos`: the device
-- has had every message of its user's inbox up to that position (written to it, or
-- acknowledged by it with `acks`); the rest is kept for it.
CREATE TABLE devices (
    user_id    BIGINT         NOT NULL,
    device     VARBINARY(256) NOT NULL,
    inbox_pos  BIGINT         NOT NULL,
    first_seen BIGINT         NOT NULL,
    last_seen  BIGINT         NOT NULL,
    PRIMARY KEY (user_id, device),
    CONSTRAINT devices_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The same for each group the device's user is in: the device has had that group's log
-- up to `pos` (the user's own messages in it are not kept for the user's devices).
CREATE TABLE device_groups (
    user_id  BIGINT         NOT NULL,
    device   VARBINARY(256) NOT NULL,
    group_id BIGINT         NOT NULL,
    pos      BIGINT         NOT NULL,
    PRIMARY KEY (user_id, device, group_id),
    KEY device_groups_by_group (group_id),
    CONSTRAINT device_groups_device FOREIGN KEY (user_id, device)
        REFERENCES devices (user_id, device) ON DELETE CASCADE,
    CONSTRAINT device_groups_group FOREIGN KEY (group_id) REFERENCES chat_groups (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Upgrade without loss: what was kept for a user (a row in deliveries) is kept for the
-- user's device '': each stream's position is set just below the oldest message still
-- kept in it (or at its head when nothing is). Every existing user gets that device, as
-- the one login it had; a message kept in a stream after one that was already written
-- (which the old queue allowed only when a server died mid-write) comes again.
INSERT INTO devices (user_id, device, inbox_pos, first_seen, last_seen)
SELECT u.id, '',
       COALESCE((SELECT MIN(m.pos) - 1 FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.user_id = u.id AND m.recipient_id = u.id), u.inbox_head),
       CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED),
       CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)
  FROM users u;
INSERT INTO device_groups (user_id, device, group_id, pos)
SELECT gm.user_id, '', gm.group_id,
       COALESCE((SELECT MIN(m.pos) - 1 FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.user_id = gm.user_id AND m.group_id = gm.group_id), g.log_head)
  FROM group_members gm JOIN chat_groups g ON g.id = gm.group_id;
UPDATE users SET devices_since = CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED);

DROP TABLE deliveries;

-- A session token belongs to the device whose login issued it.
ALTER TABLE login_tokens ADD COLUMN device VARBINARY(256) NOT NULL DEFAULT '';
CREATE INDEX login_tokens_by_device ON login_tokens (user_id, device);
