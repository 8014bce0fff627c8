-- Users, friends, groups, messages and the per-recipient delivery queue.
-- Names are VARBINARY: compared byte for byte, like SQLite, so "Bob", "bob" and "bob " are
-- three names (a _ci or PAD SPACE collation would call them one) and no collation truncates.
CREATE TABLE users (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name          VARBINARY(200) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at    BIGINT       NOT NULL,
    UNIQUE KEY users_by_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Friendship is mutual and stored in both directions, so "friends of X" is one index range.
CREATE TABLE friends (
    user_id    BIGINT NOT NULL,
    friend_id  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id),
    KEY friends_by_friend (friend_id),
    CONSTRAINT friends_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT friends_friend FOREIGN KEY (friend_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE chat_groups (
    id          BIGINT         NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARBINARY(200) NOT NULL,
    description TEXT           NOT NULL,
    creator_id  BIGINT         NOT NULL,
    created_at  BIGINT         NOT NULL,
    UNIQUE KEY groups_by_name (name),
    CONSTRAINT groups_creator FOREIGN KEY (creator_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE group_members (
    group_id  BIGINT NOT NULL,
    user_id   BIGINT NOT NULL,
    role      ENUM('creator', 'normal') NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id),
    KEY group_members_by_user (user_id, group_id),
    CONSTRAINT group_members_group FOREIGN KEY (group_id) REFERENCES chat_groups (id),
    CONSTRAINT group_members_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every accepted message, kept as history. (sender_id, cid) makes a retried send idempotent.
CREATE TABLE messages (
    id           BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    sender_id    BIGINT        NOT NULL,
    recipient_id BIGINT        NULL,
    group_id     BIGINT        NULL,
    body         TEXT          NOT NULL,
    ts           BIGINT        NOT NULL,
    cid          VARBINARY(256) NULL,
    UNIQUE KEY messages_by_cid (sender_id, cid),
    KEY messages_by_recipient (recipient_id),
    KEY messages_by_group (group_id),
    CONSTRAINT messages_sender FOREIGN KEY (sender_id) REFERENCES users (id),
    CONSTRAINT messages_recipient FOREIGN KEY (recipient_id) REFERENCES users (id),
    CONSTRAINT messages_group FOREIGN KEY (group_id) REFERENCES chat_groups (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per (recipient, message) not yet written to the recipient's connection.
CREATE TABLE deliveries (
    seq        BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    message_id BIGINT NOT NULL,
    KEY deliveries_by_user (user_id, seq),
    CONSTRAINT deliveries_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT deliveries_message FOREIGN KEY (message_id) REFERENCES messages (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
