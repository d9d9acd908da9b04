-- The SIP router (Kamailio) in front of the nodes: the carrier sends every call to it,
-- and it relays each called number to the node of the PBX that uses the number.
--
-- block_usage says which PBX uses each block now, and on which node its numbers belong:
-- an active assignment's target, else the owner's own PBX, for blocks in PBX mode. It is
-- the only declaration of that rule: a PBX's config (db/pbx.py) and the router's table
-- (db/router.py) both read it.
--
-- router_blocks is what the router has been told and has read back, per block: a block
-- is switched there only after its numbers are live on the new node, and the old node
-- removes them only after the switch (make before break, asterisk/apply.py and
-- router/sync.py). Its numbers are stored with it, so an entry can be removed from the
-- router after its block is gone.
--
-- router_numbers is the same table in the shape Kamailio's htable module loads at start
-- (key_name, key_type, value_type, key_value, expires): a restarted router routes as it
-- did before it stopped, without waiting for us. The role Kamailio logs in with may read
-- this view and nothing else (`provisioner router-reader`).
CREATE VIEW block_usage AS
SELECT b.id AS block_id, p.id AS pbx_id, p.node
FROM blocks b
LEFT JOIN assignments a ON a.block_id = b.id AND a.state = 'active'
JOIN pbxes p ON (p.id = a.target_pbx_id OR (a.id IS NULL AND p.customer = b.owner))
    AND p.removed_at IS NULL
WHERE b.mode = 'pbx';

-- The nodes' SIP addresses, copied from the settings (asterisk.nodes) by the router's
-- worker at start: Kamailio needs them in its table, the settings stay their source.
CREATE TABLE router_nodes (
    name        text PRIMARY KEY,
    sip_uri     text NOT NULL CHECK (sip_uri ~ '^sip:[A-Za-z0-9.:\[\]-]{1,250}$'),
    updated_at  timestamptz NOT NULL
);

CREATE TABLE router_blocks (
    block_id    text PRIMARY KEY,  -- no reference: it outlives a deleted block
    node        text NOT NULL,
    pbx_id      bigint,
    numbers     text[] NOT NULL CHECK (cardinality(numbers) > 0),
    updated_at  timestamptz NOT NULL
);
CREATE INDEX router_blocks_pbx ON router_blocks (pbx_id);

CREATE VIEW router_numbers AS
SELECT n.number AS key_name, 0 AS key_type, 0 AS value_type, rn.sip_uri AS key_value,
       0 AS expires
FROM router_blocks r
JOIN router_nodes rn ON rn.name = r.node
CROSS JOIN LATERAL unnest(r.numbers) AS n(number);

-- Per PBX: whether the router sends its numbers to its node (NULL: no router, or the
-- PBX uses no block), and why not.
ALTER TABLE apply_state ADD COLUMN router text
    CHECK (router IN ('routed', 'pending', 'failed'));
ALTER TABLE apply_state ADD COLUMN router_error text;
