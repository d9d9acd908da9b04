-- SIP secrets at rest: phone passwords become digest hashes, trunk passwords are sealed
-- (encrypted) by the service, and the stored config revisions lose every secret.

-- A phone keeps HA1 = md5(username:realm:password) for the realm it was created in;
-- the username is the endpoint name, <slug>-<ext>.
ALTER TABLE extensions
    ADD COLUMN sip_realm text CHECK (sip_realm ~ '^[A-Za-z0-9._-]{1,64}$'),
    ADD COLUMN sip_ha1 text CHECK (sip_ha1 ~ '^[0-9a-f]{32}$');
UPDATE extensions e
   SET sip_realm = 'provisioner',
       sip_ha1 = md5(p.slug || '-' || e.ext || ':provisioner:' || e.sip_password)
  FROM pbxes p WHERE p.id = e.pbx_id;
ALTER TABLE extensions
    ALTER COLUMN sip_realm SET NOT NULL,
    ALTER COLUMN sip_ha1 SET NOT NULL,
    DROP COLUMN sip_password;

-- A trunk password sealed with the first key of secrets.keys (a Fernet token). The plain
-- column stays only for rows written before this migration: the service seals them at
-- start once a key is configured, and nothing writes it any more.
ALTER TABLE blocks ADD COLUMN trunk_sealed text
    CHECK (trunk_sealed ~ '^[A-Za-z0-9_=-]+$' AND length(trunk_sealed) BETWEEN 40 AND 1000);

-- Revisions keep what engineers may read: every secret option replaced by <secret>. The
-- hash follows the text (path, NUL, text, NUL over the paths in order, as render.digest).
UPDATE config_revisions r SET files = redacted.files, sha256 = redacted.sha256
  FROM (
    SELECT pbx_id, revision,
           jsonb_object_agg(path, text) AS files,
           encode(sha256(string_agg(
               convert_to(path, 'UTF8') || '\x00'::bytea || convert_to(text, 'UTF8')
               || '\x00'::bytea, ''::bytea ORDER BY path)), 'hex') AS sha256
      FROM (
        SELECT pbx_id, revision, f.key AS path,
               regexp_replace(f.value, '^(password|md5_cred) = .*$', '\1 = <secret>', 'gn') AS text
          FROM config_revisions, jsonb_each_text(files) f
      ) each_file
     GROUP BY pbx_id, revision
  ) redacted
 WHERE r.pbx_id = redacted.pbx_id AND r.revision = redacted.revision;

-- A stored idempotent response that carried a phone's password: gone (a replay of it
-- answers as a new request would).
DELETE FROM idempotency_keys WHERE position('sip_password' IN convert_from(body, 'UTF8')) > 0;

-- A stored response that holds a secret shown once (a new phone's password) is kept
-- sealed like a trunk password, so that a retry still gets it.
ALTER TABLE idempotency_keys ADD COLUMN sealed boolean NOT NULL DEFAULT false;

-- Every PBX is written again, so that the files on disk lose the phones' passwords too.
INSERT INTO apply_queue (pbx_id, reason, requested_at, next_attempt_at)
SELECT id, 'phones authenticate by digest hash', now(), now() FROM pbxes
ON CONFLICT (pbx_id) DO UPDATE SET generation = apply_queue.generation + 1;
