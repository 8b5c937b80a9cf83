-- One change revision for the whole store, moved by the database itself in
-- the transaction of every change that nodes must follow (routes,
-- environments and their protection, settings, policies, tokens, trigger
-- bindings), and announced to every listening node with NOTIFY on
-- `seal_changes`, carrying only the revision (after the schema's name). NOTIFY is delivered at
-- commit, so a node never hears of a change it cannot read yet. A cron
-- tick (triggers.last_tick) is not a change to follow.

CREATE TABLE changes (
    id        INT PRIMARY KEY CHECK (id = 1),
    revision  BIGINT NOT NULL
);
INSERT INTO changes (id, revision) VALUES (1, 0);

CREATE FUNCTION seal_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r BIGINT;
BEGIN
    UPDATE changes SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO r;
    -- The schema first: stores in other schemas of one database share the
    -- channel, and each node hears only its own.
    PERFORM pg_notify('seal_changes', current_schema() || ' ' || r::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER routes_changed AFTER INSERT OR UPDATE OR DELETE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
CREATE TRIGGER environments_changed AFTER INSERT OR UPDATE OR DELETE ON environments
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
CREATE TRIGGER settings_changed AFTER INSERT OR UPDATE OR DELETE ON settings
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE ON policies
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
CREATE TRIGGER tokens_changed AFTER INSERT OR UPDATE OR DELETE ON tokens
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
CREATE TRIGGER triggers_changed AFTER INSERT OR DELETE OR UPDATE OF spec, function, queue ON triggers
    FOR EACH STATEMENT EXECUTE FUNCTION seal_changed();
