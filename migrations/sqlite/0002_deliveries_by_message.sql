-- A retried send (same cid) looks up who still waits for the first attempt's message.
CREATE INDEX deliveries_by_message ON deliveries (message_id);
