-- An environment's pipeline (JSON, see seal-control's promotion module):
-- the environment a version must have served in first and the evidence it
-- needs there (soak time, a passed verification) before it may serve here.
CREATE TABLE pipelines (
    environment TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);
