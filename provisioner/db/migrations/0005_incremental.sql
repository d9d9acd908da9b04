-- Incremental apply: the dialplan of a revision goes live by AMI operations within the
-- round, its PJSIP objects with the node's next coalesced res_pjsip reload. What is live
-- is tracked per part; good_revision stays "both parts verified live" (for rollbacks).
ALTER TABLE apply_state ADD COLUMN dialplan_revision integer;
ALTER TABLE apply_state ADD COLUMN pjsip_revision integer;
UPDATE apply_state SET dialplan_revision = good_revision, pjsip_revision = good_revision;

-- A job whose round failed at Asterisk (unreachable, an operation refused) is retried by a
-- full reload: whatever of it went live before the failure is then certainly the files.
ALTER TABLE apply_queue ADD COLUMN full_reload boolean NOT NULL DEFAULT false;
