-- Traffic captures: a sample of a function's real requests in one
-- environment (credentials removed, bodies capped), kept for replaying
-- against a candidate. A capture keeps at most `max_requests`.
CREATE TABLE captures (
    environment  TEXT NOT NULL,
    function     TEXT NOT NULL,
    rate_percent REAL NOT NULL,
    max_requests BIGINT NOT NULL,
    body_limit   BIGINT NOT NULL,
    drop_headers TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    started_by   TEXT NOT NULL,
    stopped_at   BIGINT,
    stopped_by   TEXT,
    -- Requests kept so far (counted with each insert, never re-counted).
    captured     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (environment, function)
);

CREATE TABLE captured_requests (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    environment     TEXT NOT NULL,
    function        TEXT NOT NULL,
    version         BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    method          TEXT NOT NULL,
    path            TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body            BLOB NOT NULL,
    body_truncated  BOOLEAN NOT NULL,
    status          BIGINT NOT NULL,
    response_digest TEXT NOT NULL,
    response_bytes  BIGINT NOT NULL,
    duration_ms     BIGINT NOT NULL
);
CREATE INDEX captured_requests_by_capture ON captured_requests (environment, function, id);
