-- The SIP router's table holds keys per number prefix and length instead of one key per
-- number (domain/numbers.py routing_keys): a block of 10,000 numbers is one key, so a
-- block's switch costs the same few calls whatever its size, and the router tries a few
-- prefixes of the called number, longest first (asterisk-docker/router).
--
-- router_blocks.numbers becomes `keys` (the view router_numbers follows the column, and
-- the reader roles keep their grant). Every row's pbx_id is cleared, so each block is
-- due again: its next switch sets its keys and deletes the per-number keys the running
-- router still has (the old ones, as the row lists them), and reads all back.
ALTER TABLE router_blocks RENAME COLUMN numbers TO keys;
UPDATE router_blocks SET pbx_id = NULL;
