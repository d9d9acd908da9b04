-- Carriers that require REGISTER: the block's trunk registers with the owner's
-- credentials (a PJSIP registration object) while a PBX uses the block.
ALTER TABLE blocks ADD COLUMN trunk_register boolean NOT NULL DEFAULT false;
