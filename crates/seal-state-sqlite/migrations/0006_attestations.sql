-- Signed attestations (DSSE envelopes) attached to artifacts as OCI
-- referrers. The blobs live in the artifact store; this is the index from
-- an artifact digest to its referrers.
CREATE TABLE attestations (
    subject TEXT NOT NULL,
    referrer TEXT NOT NULL,
    envelope TEXT NOT NULL,
    keyid TEXT,
    created_at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (subject, referrer)
);
