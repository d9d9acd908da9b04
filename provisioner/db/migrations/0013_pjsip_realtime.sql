-- PJSIP realtime: on a node with `pjsip: realtime`, Asterisk reads its tenants' PJSIP
-- endpoints, AORs and auths from here (sorcery's realtime wizard through
-- res_config_pgsql, behind its memory cache), so a change is a row and an expired
-- cache entry, never a reload of res_pjsip.
--
-- pjsip_objects: one row per object, as the PBX's pjsip file declares it (the rows are
-- read from the rendered file: the template stays the one declaration of what an
-- endpoint is); pbx_id NULL: the node's own objects (the carrier's endpoint and AOR),
-- from the node's file. `fields` maps each option to its value in res_config_pgsql's form: an
-- option given several times (set_var) is one value, its parts joined by ';' and each
-- part's '^' and ';' written ^5E and ^3B (Asterisk splits and decodes them again).
--
-- ps_endpoints, ps_aors, ps_auths (schema pjsip_realtime): the tables in the shape
-- Asterisk wants, one column per option, NULL where an object leaves the option out.
-- Each login role a node reads with sees only that node's rows (pjsip_readers, made by
-- `provisioner pjsip-reader`): a node's credentials open no other node's secrets.
-- Column order matters: Asterisk applies the options in it (disallow before allow).
CREATE TABLE pjsip_objects (
    node        text NOT NULL,
    type        text NOT NULL CHECK (type IN ('endpoint', 'aor', 'auth')),
    id          text NOT NULL CHECK (id ~ '^[A-Za-z0-9_.-]{1,200}$'),
    pbx_id      bigint REFERENCES pbxes (id),
    fields      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (node, type, id)
);
CREATE INDEX pjsip_objects_pbx ON pjsip_objects (pbx_id);

CREATE TABLE pjsip_readers (
    role        name PRIMARY KEY,
    node        text NOT NULL
);

CREATE SCHEMA pjsip_realtime;

CREATE VIEW pjsip_realtime.ps_endpoints AS
SELECT o.id,
       o.fields->>'context' AS context,
       o.fields->>'subscribe_context' AS subscribe_context,
       o.fields->>'callerid' AS callerid,
       o.fields->>'accountcode' AS accountcode,
       o.fields->>'auth' AS auth,
       o.fields->>'aors' AS aors,
       o.fields->>'outbound_auth' AS outbound_auth,
       o.fields->>'disallow' AS disallow,
       o.fields->>'allow' AS allow,
       o.fields->>'direct_media' AS direct_media,
       o.fields->>'allow_subscribe' AS allow_subscribe,
       o.fields->>'allow_transfer' AS allow_transfer,
       o.fields->>'named_call_group' AS named_call_group,
       o.fields->>'named_pickup_group' AS named_pickup_group,
       o.fields->>'send_pai' AS send_pai,
       o.fields->>'trust_id_outbound' AS trust_id_outbound,
       o.fields->>'send_connected_line' AS send_connected_line,
       o.fields->>'set_var' AS set_var
FROM pjsip_objects o
JOIN pjsip_readers r ON r.node = o.node AND r.role = current_user
WHERE o.type = 'endpoint';

CREATE VIEW pjsip_realtime.ps_aors AS
SELECT o.id,
       o.fields->>'contact' AS contact,
       o.fields->>'max_contacts' AS max_contacts,
       o.fields->>'remove_existing' AS remove_existing
FROM pjsip_objects o
JOIN pjsip_readers r ON r.node = o.node AND r.role = current_user
WHERE o.type = 'aor';

CREATE VIEW pjsip_realtime.ps_auths AS
SELECT o.id,
       o.fields->>'auth_type' AS auth_type,
       o.fields->>'username' AS username,
       o.fields->>'password' AS password,
       o.fields->>'realm' AS realm,
       o.fields->>'md5_cred' AS md5_cred
FROM pjsip_objects o
JOIN pjsip_readers r ON r.node = o.node AND r.role = current_user
WHERE o.type = 'auth';
