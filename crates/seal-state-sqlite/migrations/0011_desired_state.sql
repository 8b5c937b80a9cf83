-- Holds: a version rolled back in an environment (by a gate, a hook or a
-- person) is held there, so applying a release file cannot bring it
-- back. The hold itself is the deployment that rolled it back (nothing to
-- write, nothing to lose); releasing it is a row here, naming that
-- deployment, so a later rollback of the same version holds it again.
CREATE TABLE hold_releases (
    environment   TEXT NOT NULL,
    function      TEXT NOT NULL,
    version       INTEGER NOT NULL,
    deployment_id INTEGER NOT NULL,
    released_at   INTEGER NOT NULL,
    released_by   TEXT NOT NULL,
    PRIMARY KEY (environment, function, version, deployment_id)
);

-- The release file last applied to each environment (the part about that
-- environment), which the drift check compares with what serves.
CREATE TABLE applied_files (
    environment TEXT PRIMARY KEY,
    file        TEXT NOT NULL,
    file_digest TEXT NOT NULL,
    commit_id   TEXT,
    actor       TEXT NOT NULL,
    applied_at  INTEGER NOT NULL
);

-- Each apply of a release file: one id, one state (running, succeeded,
-- failed, rolled_back), its plan and every step's outcome (JSON). At most
-- one runs at a time.
CREATE TABLE releases (
    id           INTEGER PRIMARY KEY,
    file_digest  TEXT NOT NULL,
    environments TEXT NOT NULL,
    source       TEXT,
    actor        TEXT NOT NULL,
    state        TEXT NOT NULL,
    plan         TEXT NOT NULL,
    outcomes     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    node         TEXT NOT NULL
);
CREATE UNIQUE INDEX one_running_release ON releases (state) WHERE state = 'running';
