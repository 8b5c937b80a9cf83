-- Whether an environment is protected (permission widenings need an
-- admin; a request pinned to a version needs the preview token). NULL
-- follows the server's rule (its default environment and `production`
-- are protected); 1 or 0 was set by an admin.
ALTER TABLE environments ADD COLUMN protected BIGINT;
