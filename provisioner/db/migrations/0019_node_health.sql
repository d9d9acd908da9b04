-- Node health: the SIP router probes every node with OPTIONS (Kamailio's dispatcher
-- module) and marks one that stops answering inactive; the service reads the router's
-- view (dispatcher.list) and keeps what it last saw per node here, so that node.down
-- and node.up go to the portal once per change, whichever instance sees it first and
-- however often the service restarts.
--
-- router_dispatcher is the nodes in the shape dispatcher loads from a database: one
-- set (1), each node a destination named by its attrs. Kamailio checks the shape's
-- version in a `version` table (dispatcher's table version is 4); the router's reader
-- role may read these two and router_numbers, nothing else.
CREATE TABLE IF NOT EXISTS version (
    table_name     varchar(32) PRIMARY KEY,
    table_version  integer NOT NULL DEFAULT 0
);
INSERT INTO version (table_name, table_version) VALUES ('router_dispatcher', 4)
ON CONFLICT (table_name) DO UPDATE SET table_version = EXCLUDED.table_version;

CREATE VIEW router_dispatcher WITH (security_barrier = true) AS
SELECT (row_number() OVER (ORDER BY name))::integer AS id, 1 AS setid,
       sip_uri AS destination, 0 AS flags, 0 AS priority,
       'node=' || name AS attrs, name AS description
FROM router_nodes;

CREATE TABLE node_health (
    node        text PRIMARY KEY,
    up          boolean NOT NULL,
    since       timestamptz NOT NULL,  -- when the router's view last changed
    reason      text
);

-- Reader roles made before: the same grants as `provisioner router-reader` gives now.
DO $$
DECLARE reader text;
BEGIN
    FOR reader IN SELECT DISTINCT grantee FROM information_schema.role_table_grants
                  WHERE table_name = 'router_numbers' AND privilege_type = 'SELECT'
                    AND grantee <> current_user
    LOOP
        EXECUTE format('GRANT SELECT ON router_dispatcher, version TO %I', reader);
    END LOOP;
END $$;
