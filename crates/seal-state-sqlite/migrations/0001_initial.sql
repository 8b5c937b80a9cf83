-- Seal state store, schema 1. Portable SQL: SQLite and PostgreSQL both run it.
-- Times are unix milliseconds (BIGINT); JSON documents are TEXT.

CREATE TABLE functions (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE versions (
    function        TEXT    NOT NULL REFERENCES functions(name),
    number          BIGINT  NOT NULL,
    digest          TEXT    NOT NULL UNIQUE,
    manifest        TEXT    NOT NULL,
    component_size  BIGINT  NOT NULL,
    compiled_sha256 TEXT,
    created_at      BIGINT  NOT NULL,
    created_by      TEXT    NOT NULL,
    PRIMARY KEY (function, number)
);

CREATE TABLE environments (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE routes (
    environment    TEXT   NOT NULL REFERENCES environments(name),
    function       TEXT   NOT NULL REFERENCES functions(name),
    weights        TEXT   NOT NULL,
    deployment_id  BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (environment, function)
);

CREATE TABLE deployments (
    id             BIGINT PRIMARY KEY,
    function       TEXT   NOT NULL REFERENCES functions(name),
    environment    TEXT   NOT NULL REFERENCES environments(name),
    kind           TEXT   NOT NULL,
    strategy       TEXT   NOT NULL,
    state          TEXT   NOT NULL,
    from_weights   TEXT,
    to_weights     TEXT   NOT NULL,
    actor          TEXT   NOT NULL,
    reason         TEXT,
    created_at     BIGINT NOT NULL,
    finished_at    BIGINT
);
CREATE INDEX deployments_by_route ON deployments (function, environment, id);

CREATE TABLE deployment_events (
    deployment_id  BIGINT NOT NULL REFERENCES deployments(id),
    seq            BIGINT NOT NULL,
    at             BIGINT NOT NULL,
    kind           TEXT   NOT NULL,
    detail         TEXT   NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE audit (
    id        BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    object    TEXT   NOT NULL,
    digest    TEXT,
    outcome   TEXT   NOT NULL,
    detail    TEXT   NOT NULL
);

INSERT INTO environments (name, created_at) VALUES ('production', 0);
INSERT INTO environments (name, created_at) VALUES ('staging', 0);
