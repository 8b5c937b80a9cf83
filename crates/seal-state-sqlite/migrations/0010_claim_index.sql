-- A claim reads the due deliveries of one subscription in order and stops
-- at its limit: without this index it read, joined and sorted every due
-- delivery of every subscription first, so a backlog slowed each claim.
CREATE INDEX deliveries_claim ON deliveries (trigger, state, next_at, id);
