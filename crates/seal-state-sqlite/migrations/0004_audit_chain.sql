-- A hash chain over the audit log: each entry carries the hash of the one
-- before it and its own hash over (prev_hash, id, at, actor, action, object,
-- digest, outcome, detail). Rows written before this migration are chained
-- when the store opens.

ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;
