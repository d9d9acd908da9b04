-- A reset (or expiry) ends the target PBX's choice of a default target for the block;
-- but while the SIP router still sends the block's numbers to that PBX, it keeps
-- ringing them as it did (make before break, db/pbx.py _HELD). So the choice is marked
-- ended instead of deleted: a held block still rings it, the block used again does not
-- (the PBX must choose anew), and the router step deletes it once the router sends the
-- numbers elsewhere (db/router.py routed). A new choice clears the mark.
ALTER TABLE default_targets ADD COLUMN ended_at timestamptz;
