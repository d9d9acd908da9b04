-- Extension numbers in the database follow the API's rule (domain/rules.py EXTENSION):
-- 2 to 5 digits, never starting with 0. The API never wrote another; the test of the
-- rules compares these constraints with the one declaration.
ALTER TABLE extensions DROP CONSTRAINT extensions_ext_check,
    ADD CONSTRAINT extensions_ext_check CHECK (ext ~ '^[1-9][0-9]{1,4}$');
ALTER TABLE ring_groups DROP CONSTRAINT ring_groups_ext_check,
    ADD CONSTRAINT ring_groups_ext_check CHECK (ext ~ '^[1-9][0-9]{1,4}$');
ALTER TABLE blocks DROP CONSTRAINT blocks_default_target_check,
    ADD CONSTRAINT blocks_default_target_check CHECK (default_target ~ '^[1-9][0-9]{1,4}$');
