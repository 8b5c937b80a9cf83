-- Cost: invocations and GB-seconds per version per hour, and a budget per
-- function with the period it last warned about.

CREATE TABLE usage (
    function TEXT NOT NULL,
    environment TEXT NOT NULL,
    version BIGINT NOT NULL,
    -- Start of the hour (unix ms, UTC).
    hour BIGINT NOT NULL,
    invocations BIGINT NOT NULL DEFAULT 0,
    gb_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (function, environment, version, hour)
);
CREATE INDEX usage_by_function_hour ON usage (function, hour);

CREATE TABLE budgets (
    function TEXT PRIMARY KEY,
    gb_seconds DOUBLE PRECISION NOT NULL,
    -- 'day' or 'month' (UTC calendar periods).
    period TEXT NOT NULL,
    webhook TEXT,
    -- Start (unix ms) of the last period a warning was sent for.
    alerted_period BIGINT,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
