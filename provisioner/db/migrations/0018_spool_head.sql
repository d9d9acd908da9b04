-- A spool file is known by its inode and the fingerprint of its first line: a spool
-- removed and made anew at once (a rotation that deletes) may get the same inode, and
-- then only its first line tells that it is another file, to be read from its start.
-- '' (rows from before, or no whole line read yet): the inode alone.
ALTER TABLE cdr_spools ADD COLUMN head text NOT NULL DEFAULT '';
