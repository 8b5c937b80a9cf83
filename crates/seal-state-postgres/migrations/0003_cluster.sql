-- One controller among several nodes, and what each node reports.
--
-- `controller_lease` is one row: the node holding it runs the deployment
-- drivers, cron ticks and budget checks. A node takes it when it is free or
-- expired (by the database's clock, so nodes' clocks need not agree) and the
-- epoch grows with every change of holder; the holder renews it without a
-- new epoch. Every transition a driver commits checks, in its own
-- transaction, that its node still holds its epoch (`FOR SHARE`: a takeover
-- waits for that commit), so a stalled old controller cannot commit after
-- another took over.

CREATE TABLE controller_lease (
    id           INT PRIMARY KEY CHECK (id = 1),
    holder       TEXT,
    epoch        BIGINT NOT NULL,
    acquired_at  TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ NOT NULL
);
INSERT INTO controller_lease (id, holder, epoch, expires_at) VALUES (1, NULL, 0, '-infinity');

-- Each node's heartbeat (every second) and the cumulative counters of every
-- version it serves: the controller sums them to judge a canary on the
-- whole fleet's traffic.
CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    api           TEXT NOT NULL,
    gateway       TEXT NOT NULL,
    release       TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL,
    -- The live view of the drivers it runs (JSON, by deployment id).
    rollouts      TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE node_versions (
    node         TEXT NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    environment  TEXT NOT NULL,
    function     TEXT NOT NULL,
    version      BIGINT NOT NULL,
    weight       INT NOT NULL,
    counters     TEXT NOT NULL,
    PRIMARY KEY (node, environment, function, version)
);

-- Approve, promote and abort sent through a node that is not the controller:
-- written here (the insert moves the change revision, so the controller
-- hears of it at once), carried out by the controller's driver, answered
-- in the row, which the sending node reads.
CREATE TABLE deployment_commands (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployment   BIGINT NOT NULL,
    command      TEXT NOT NULL,
    actor        TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    answer       TEXT
);
CREATE INDEX deployment_commands_pending ON deployment_commands (id) WHERE answer IS NULL;
CREATE TRIGGER deployment_commands_sent AFTER INSERT ON deployment_commands
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
