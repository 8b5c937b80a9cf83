-- Feature flags per environment (flagd JSON): each change a revision
-- holding the whole set, the keys it changed, who and when.
CREATE TABLE flag_revisions (
    environment TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    flags       TEXT NOT NULL,
    action      TEXT NOT NULL,
    changed     TEXT NOT NULL,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    PRIMARY KEY (environment, revision)
);

CREATE TRIGGER flags_changed AFTER INSERT OR UPDATE OR DELETE ON flag_revisions
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
