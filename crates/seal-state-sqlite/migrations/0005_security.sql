-- Access control, per-environment configuration and secrets, and trust
-- policies.

-- API bearer tokens. Only the SHA-256 of a token is kept; the token itself
-- is shown once, when it is created.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- 'viewer', 'deployer' or 'admin'.
    role TEXT NOT NULL,
    -- JSON array of environment names the token may change; NULL = all.
    environments TEXT,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT,
    revoked_by TEXT
);

-- Config values and secrets of a function in an environment. A secret's
-- value is a nonce followed by its AEAD ciphertext; a config value is
-- plain UTF-8.
CREATE TABLE settings (
    function TEXT NOT NULL,
    environment TEXT NOT NULL,
    key TEXT NOT NULL,
    secret BIGINT NOT NULL,
    value BLOB NOT NULL,
    -- The revision that last set it.
    revision BIGINT NOT NULL,
    PRIMARY KEY (function, environment, key)
);

-- One row per change of a function's settings in an environment: who,
-- when, which keys (never values).
CREATE TABLE setting_revisions (
    function TEXT NOT NULL,
    environment TEXT NOT NULL,
    revision BIGINT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    -- JSON: {"kind": "config"|"secrets", "set": [keys], "unset": [keys]}
    changes TEXT NOT NULL,
    PRIMARY KEY (function, environment, revision)
);

-- Trust policy of an environment (JSON, see seal-trust's Policy).
CREATE TABLE policies (
    environment TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
