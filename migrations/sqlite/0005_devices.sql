-- Protocol 1.2: several devices per user, and messages kept per device by position,
-- not by a row per recipient (see migrations/mysql/0005_devices.sql for the why).
ALTER TABLE users ADD COLUMN inbox_head INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN devices_since INTEGER;
ALTER TABLE chat_groups ADD COLUMN log_head INTEGER NOT NULL DEFAULT 0;
-- Where a member joined a group's log: a user's very first device gets the group's
-- messages from there (as version 1 kept them for a member who never logged in).
ALTER TABLE group_members ADD COLUMN joined_pos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN pos INTEGER;

UPDATE messages SET pos = r.n
  FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY recipient_id ORDER BY id) AS n
          FROM messages WHERE recipient_id IS NOT NULL) r
 WHERE messages.id = r.id;
UPDATE messages SET pos = r.n
  FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY group_id ORDER BY id) AS n
          FROM messages WHERE group_id IS NOT NULL) r
 WHERE messages.id = r.id;
UPDATE users
   SET inbox_head = (SELECT COALESCE(MAX(m.pos), 0) FROM messages m WHERE m.recipient_id = users.id);
UPDATE chat_groups
   SET log_head = (SELECT COALESCE(MAX(m.pos), 0) FROM messages m WHERE m.group_id = chat_groups.id);

CREATE UNIQUE INDEX messages_by_inbox ON messages (recipient_id, pos);
CREATE UNIQUE INDEX messages_by_log ON messages (group_id, pos);

CREATE TABLE devices (
    user_id    INTEGER NOT NULL REFERENCES users(id),
    device     TEXT    NOT NULL,
    inbox_pos  INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device)
);

CREATE TABLE device_groups (
    user_id  INTEGER NOT NULL,
    device   TEXT    NOT NULL,
    group_id INTEGER NOT NULL REFERENCES chat_groups(id),
    pos      INTEGER NOT NULL,
    PRIMARY KEY (user_id, device, group_id),
    FOREIGN KEY (user_id, device) REFERENCES devices (user_id, device) ON DELETE CASCADE
);
CREATE INDEX device_groups_by_group ON device_groups (group_id);

INSERT INTO devices (user_id, device, inbox_pos, first_seen, last_seen)
SELECT u.id, '',
       COALESCE((SELECT MIN(m.pos) - 1 FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.user_id = u.id AND m.recipient_id = u.id), u.inbox_head),
       CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
       CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
  FROM users u;
INSERT INTO device_groups (user_id, device, group_id, pos)
SELECT gm.user_id, '', gm.group_id,
       COALESCE((SELECT MIN(m.pos) - 1 FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.user_id = gm.user_id AND m.group_id = gm.group_id), g.log_head)
  FROM group_members gm JOIN chat_groups g ON g.id = gm.group_id;
UPDATE users SET devices_since = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER);

DROP TABLE deliveries;

ALTER TABLE login_tokens ADD COLUMN device TEXT NOT NULL DEFAULT '';
CREATE INDEX login_tokens_by_device ON login_tokens (user_id, device);
