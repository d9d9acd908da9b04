-- A removed PBX stays as a row (its revisions and past assignments refer to it) with
-- removed_at set: the apply takes its files and live objects away; PUT …/pbx revives it.
ALTER TABLE pbxes ADD COLUMN removed_at timestamptz;
