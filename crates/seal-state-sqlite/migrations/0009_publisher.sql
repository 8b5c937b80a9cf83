-- A publisher token may enqueue events only on the queues it names (a
-- JSON list; NULL for every other role).
ALTER TABLE tokens ADD COLUMN queues TEXT;
