-- Moving a PBX to another node: it is written and verified on the new node first; the
-- old node then removes the files of leaving_revision and their live objects.
ALTER TABLE pbxes ADD COLUMN leaving_node text;
ALTER TABLE pbxes ADD COLUMN leaving_revision integer;
