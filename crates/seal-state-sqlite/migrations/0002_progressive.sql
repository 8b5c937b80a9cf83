-- Progressive delivery: a deployment carries its plan and where it is in
-- it; a route carries its sticky key and the version it previews.

ALTER TABLE deployments ADD COLUMN plan TEXT;
ALTER TABLE deployments ADD COLUMN baseline BIGINT;
ALTER TABLE deployments ADD COLUMN candidate BIGINT;
ALTER TABLE deployments ADD COLUMN step BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN step_started_at BIGINT;
CREATE INDEX deployments_by_state ON deployments (state);

ALTER TABLE routes ADD COLUMN sticky_header TEXT;
ALTER TABLE routes ADD COLUMN preview BIGINT;
