-- Phones through the SIP router: each PBX is a SIP domain, <slug>.<suffix>, and its
-- phones register at the router, which relays them to the PBX's node. So the router's
-- table holds an entry per PBX besides the entries per block: 'pbx:<slug>' (the key the
-- router reads from the domain's first label), switched by the same router step, make
-- before break, when the PBX moves to another node.
--
-- router_usage is where each entry belongs now: the blocks as block_usage says, and
-- every PBX on its own node. It is the one declaration both kinds of entry are read
-- from (db/router.py `due`, `pending_pbxes`); router_blocks stores both (an entry's id
-- is its block id, or 'pbx:<slug>').
CREATE VIEW router_usage AS
SELECT block_id, pbx_id, node FROM block_usage
UNION ALL
SELECT 'pbx:' || lower(customer), id, node FROM pbxes WHERE removed_at IS NULL;

-- A phone's AOR keeps the Path its REGISTER came with (the router), so the node's
-- calls and NOTIFYs to it go back through the router: a column for a realtime node.
CREATE OR REPLACE VIEW pjsip_realtime.ps_aors AS
SELECT o.id,
       o.fields->>'contact' AS contact,
       o.fields->>'max_contacts' AS max_contacts,
       o.fields->>'remove_existing' AS remove_existing,
       o.fields->>'support_path' AS support_path
FROM pjsip_objects o
JOIN pjsip_readers r ON r.node = o.node AND r.role = current_user
WHERE o.type = 'aor';
ALTER VIEW pjsip_realtime.ps_aors SET (security_barrier = true);
