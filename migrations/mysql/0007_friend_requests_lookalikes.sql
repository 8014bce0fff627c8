-- Protocol 1.2: names that look like other names, and friend requests with approval.

-- look_key: the SHA-256 of the UTS #39 confusable skeleton of a name's NFKC case-folded
-- form (chat.protocol.lookalike). "ａｌｉｃｅ" and "аlice" (Cyrillic а) share alice's key,
-- and the UNIQUE index refuses the second such name whichever node inserts it. SQL
-- cannot compute skeletons: the store fills the key of older rows when it starts
-- (chat.store.names), the lowest id of a look-alike set getting it; the others keep NULL
-- and keep working (a UNIQUE index allows many NULLs).
ALTER TABLE users
    ADD COLUMN look_key VARBINARY(32) NULL,
    ADD UNIQUE KEY users_by_look_key (look_key),
    ADD COLUMN friend_requests VARCHAR(16) NOT NULL DEFAULT 'anyone';
ALTER TABLE chat_groups
    ADD COLUMN look_key VARBINARY(32) NULL,
    ADD UNIQUE KEY groups_by_look_key (look_key);

-- requester_id asked target_id to be friends, and target_id (whose setting is "approve")
-- has not answered. The id orders a target's requests by age: beyond 1,000 waiting,
-- the oldest is dropped (friend_requests_by_age). The pair key lists a target's
-- requests by requester id and answers "did B ask A?" in one probe.
CREATE TABLE friend_requests (
    id           BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    target_id    BIGINT NOT NULL,
    requester_id BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE KEY friend_requests_pair (target_id, requester_id),
    KEY friend_requests_by_age (target_id, id),
    KEY friend_requests_by_requester (requester_id),
    CONSTRAINT friend_requests_target FOREIGN KEY (target_id) REFERENCES users (id),
    CONSTRAINT friend_requests_requester FOREIGN KEY (requester_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
