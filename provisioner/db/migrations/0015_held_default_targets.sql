-- A reset (or expiry) ends the target PBX's choice of a default target for the block;
-- but while the SIP router still sends the block's numbers to that PBX, it keeps
-- ringing them as it did (make before break, db/pbx.py _HELD). So the choice is marked
-- ended instead of deleted: a held block still rings it, the block used again does not
-- (the PBX must choose anew), and the router step deletes it once the router sends the
-- numbers elsewhere (db/router.py routed). A new choice clears the mark.
ALTER TABLE default_targets ADD COLUMN ended_at timestamptz;

-- A router sync switches the router first and records the block in router_blocks after
-- it read every number back; in between, the router already sends some numbers to the
-- new PBX while router_blocks still names the old one. So before it switches, the sync
-- records where it is switching the block to, and both PBXs hold the block (db/pbx.py
-- _HELD) until the switch is recorded: make before break for both sides, however the
-- usage changes meanwhile. Rows stay until the block is recorded (a switch that failed
-- halfway may have pointed some numbers there); several for one block if its usage
-- changed while a switch was failing.
CREATE TABLE router_switching (
    block_id    text NOT NULL,  -- no reference, as router_blocks
    pbx_id      bigint NOT NULL,
    node        text NOT NULL,
    since       timestamptz NOT NULL,
    PRIMARY KEY (block_id, pbx_id, node)
);
