-- Where a block's numbers without their own extension ring is the choice of the PBX
-- that uses the block, not of the block's owner: while A's block is assigned to B's
-- PBX, only B can name one of B's extensions or ring groups (A could otherwise send
-- B's calls nowhere, or pin an extension B then could not delete). So the default
-- target moves from the block to the pair (PBX, block). The owner's own PBX keeps its
-- row while the block is away; a PBX that used the block by assignment loses its row
-- when the assignment ends.
CREATE TABLE default_targets (
    pbx_id      bigint NOT NULL REFERENCES pbxes (id) ON DELETE CASCADE,
    block_id    text NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    target      text NOT NULL CHECK (target ~ '^[1-9][0-9]{1,4}$'),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (pbx_id, block_id)
);

-- What was set keeps ringing where it rang, where that is an extension or ring group of
-- the PBX using the block now; a target that named nothing there rang nowhere and is
-- dropped.
INSERT INTO default_targets (pbx_id, block_id, target, updated_at)
SELECT p.id, b.id, b.default_target, b.updated_at
FROM blocks b
LEFT JOIN assignments a ON a.block_id = b.id AND a.state = 'active'
JOIN pbxes p ON (p.id = a.target_pbx_id OR (a.id IS NULL AND p.customer = b.owner))
    AND p.removed_at IS NULL
WHERE b.mode = 'pbx' AND b.default_target IS NOT NULL
  AND (EXISTS (SELECT 1 FROM extensions e WHERE e.pbx_id = p.id AND e.ext = b.default_target)
       OR EXISTS (SELECT 1 FROM ring_groups g WHERE g.pbx_id = p.id AND g.ext = b.default_target));

ALTER TABLE blocks DROP COLUMN default_target;
