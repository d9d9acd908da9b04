-- What a reader role (a node's Asterisk, the router's Kamailio) can reach, closed.
--
-- 1. The pjsip_realtime views filter by current_user. In a plain view PostgreSQL may run
--    a caller's cheap predicate first (a cast that fails, a pg_temp function with a tiny
--    COST that RAISEs NOTICE), and the error or the notice shows other nodes' rows,
--    trunk passwords among them. A security_barrier view applies its own filter before
--    any predicate of the caller that is not leakproof. The views call only `->>` and
--    current_user in their own quals and target lists.
ALTER VIEW pjsip_realtime.ps_endpoints SET (security_barrier = true);
ALTER VIEW pjsip_realtime.ps_aors SET (security_barrier = true);
ALTER VIEW pjsip_realtime.ps_auths SET (security_barrier = true);
-- The router's view has no filter (its reader may see every row of it); a barrier all
-- the same, so a filter added later cannot be bypassed either.
ALTER VIEW router_numbers SET (security_barrier = true);

-- 2. Locks. An advisory lock is open to every role of the cluster (pg_locks even shows
--    its key), so a reader could take the service's and hold routing, applies, or every
--    event-writing commit, for as long as it liked. The service's locks are row locks on
--    this table instead: no reader has any privilege on it, so none can lock a row.
--    Rows: 'events' (numbering at commit), and, added on first use, '<role>:<node>' (one
--    applier and one PJSIP reloader per node) and 'router:<block>' (one switch of a
--    block on the SIP router at a time).
CREATE TABLE service_locks (
    name text PRIMARY KEY
);
INSERT INTO service_locks (name) VALUES ('events');

CREATE OR REPLACE FUNCTION events_number_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Held until the commit is visible, as the advisory lock it replaces (0010).
    PERFORM 1 FROM service_locks WHERE name = 'events' FOR UPDATE;
    UPDATE events SET position = nextval('event_positions') WHERE id = NEW.id;
    RETURN NULL;
END;
$$;

-- 3. Wake-ups. Any role may NOTIFY any channel, and PostgreSQL cannot revoke that; a
--    reader flooding the service's channels made the workers poll without end. So the
--    channels are named with a secret of this database: `<channel>_<secret>`. Only the
--    service can read it; the LISTEN and NOTIFY statements that carry it are shown in
--    pg_stat_activity only to the service's role and superusers.
CREATE TABLE service_channel (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    secret   text NOT NULL CHECK (secret ~ '^[a-f0-9]{32}$')
);
INSERT INTO service_channel (secret) VALUES (replace(gen_random_uuid()::text, '-', ''));
