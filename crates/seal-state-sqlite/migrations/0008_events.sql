-- Event triggers: queues per environment, triggers (queue subscriptions
-- and cron schedules) binding a function in an environment, enqueued
-- events (the CloudEvent in its structured JSON form), one delivery per
-- event and subscription with every attempt, and the ticks of cron
-- triggers.

CREATE TABLE queues (
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    dedup_window_ms BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (environment, name)
);

CREATE TABLE triggers (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    function TEXT NOT NULL,
    -- The queue a queue trigger reads (NULL for cron).
    queue TEXT,
    spec TEXT NOT NULL,
    -- The last tick of a cron trigger committed as fired (unix ms).
    last_tick BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX triggers_by_queue ON triggers (environment, queue);

CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    environment TEXT NOT NULL,
    queue TEXT NOT NULL,
    ce_id TEXT NOT NULL,
    ce_source TEXT NOT NULL,
    ce_type TEXT NOT NULL,
    event TEXT NOT NULL,
    enqueued_at BIGINT NOT NULL
);
CREATE INDEX events_dedup ON events (environment, queue, ce_source, ce_id);

CREATE TABLE deliveries (
    id BIGINT PRIMARY KEY,
    event_id BIGINT NOT NULL,
    trigger TEXT NOT NULL,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    -- A running attempt's deadline: past it, the delivery is due again.
    lease_until BIGINT,
    -- Deliver to this version rather than by the route (a redrive `--to`).
    pinned_version BIGINT,
    dead_reason TEXT,
    last_error TEXT,
    last_version BIGINT,
    finished_at BIGINT
);
CREATE INDEX deliveries_due ON deliveries (state, next_at);
CREATE INDEX deliveries_by_event ON deliveries (event_id);

CREATE TABLE attempts (
    delivery_id BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    version BIGINT,
    digest TEXT,
    status BIGINT,
    outcome TEXT NOT NULL,
    error_kind TEXT,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE cron_runs (
    trigger TEXT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    fired_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT,
    digest TEXT,
    http_status BIGINT,
    duration_ms BIGINT,
    error TEXT,
    PRIMARY KEY (trigger, scheduled_at)
);
