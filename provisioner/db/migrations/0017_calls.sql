-- Usage per owner account: every node's call records (CDRs), imported from the node's
-- own spool file (Asterisk's cdr_custom, one CSV line a record, appended as each call
-- ends). The import is idempotent: a record is its node, uniqueid and sequence (one
-- call can have several records: a ring group's legs, a transfer), so a line read
-- twice (a crash before the offset was stored, a re-import) is stored once.
CREATE TABLE calls (
    id           bigserial UNIQUE,        -- the call list's cursor (imported order)
    node         text NOT NULL,
    uniqueid     text NOT NULL,
    sequence     integer NOT NULL,
    linkedid     text NOT NULL,           -- one call, across its records
    started_at   timestamptz NOT NULL,
    answered_at  timestamptz,
    ended_at     timestamptz NOT NULL,
    duration     integer NOT NULL,        -- seconds, start to end
    billsec      integer NOT NULL,        -- seconds, answer to end
    disposition  text NOT NULL,           -- ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION
    direction    text NOT NULL CHECK (direction IN ('inbound', 'outbound', 'internal')),
    number       text,                    -- our number on the carrier side (E.164)
    peer         text,                    -- the other party's number
    owner        text,                    -- billed to: the block's owner (accountcode)
    pbx          text,                    -- the PBX that used the block
    block_id     text,                    -- the block the call went over (none: internal)
    imported_at  timestamptz NOT NULL,
    PRIMARY KEY (node, uniqueid, sequence)
);
-- The call list of an owner and of a PBX over a period (GET /v1/accounts/{c}/calls).
CREATE INDEX calls_owner ON calls (owner, started_at);
CREATE INDEX calls_pbx ON calls (pbx, started_at);
CREATE INDEX calls_started ON calls (started_at);  -- retention

-- What the usage sums (GET /v1/accounts/{c}/usage): a row per call (its node and
-- linkedid) and per what it was billed as, kept by the import in the statement that
-- stores the records (a ring group's legs are one row; a call transferred out to the
-- carrier has a second, outbound row). Summing these, not the records, keeps the usage
-- of an account with 100,000 calls a month to one pass over an index, with no DISTINCT.
CREATE TABLE call_usage (
    node        text NOT NULL,
    linkedid    text NOT NULL,
    block_id    text,
    owner       text,
    pbx         text,
    direction   text NOT NULL,
    started_at  timestamptz NOT NULL,  -- its first record's start
    answered    boolean NOT NULL,      -- any of its records answered
    billsec     bigint NOT NULL,       -- of all its records
    UNIQUE NULLS NOT DISTINCT (node, linkedid, block_id, owner, pbx, direction)
);
CREATE INDEX call_usage_owner ON call_usage (owner, started_at)
    INCLUDE (block_id, pbx, direction, answered, billsec);
CREATE INDEX call_usage_pbx ON call_usage (pbx, started_at)
    INCLUDE (block_id, owner, direction, answered, billsec);
CREATE INDEX call_usage_started ON call_usage (started_at);  -- retention

-- How far each node's spool file is imported: its inode (a rotated file starts anew)
-- and the byte offset after the last whole line stored, moved in the same transaction
-- as the records it covers.
CREATE TABLE cdr_spools (
    node        text PRIMARY KEY,
    inode       bigint NOT NULL,
    byte_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL
);
