-- The PBX model behind the generated Asterisk config (extensions, ring groups, block
-- trunks and routes), the revisions of what was written, and the apply state.

-- Which Asterisk node a PBX is homed on (a name from asterisk.nodes in the config).
ALTER TABLE pbxes ADD COLUMN node text NOT NULL DEFAULT 'default';

-- A block's trunk at the carrier. The password is write-only in the API.
ALTER TABLE blocks
    ADD COLUMN trunk_username text CHECK (trunk_username ~ '^[A-Za-z0-9._+-]{1,64}$'),
    ADD COLUMN trunk_password text CHECK (trunk_password ~ '^[\x21-\x7e]{8,128}$'),
    -- Where calls to a number of the block without its own route go: an extension or
    -- ring group number of the PBX that uses the block.
    ADD COLUMN default_target text CHECK (default_target ~ '^[0-9]{2,5}$');

CREATE TABLE extensions (
    pbx_id        bigint NOT NULL REFERENCES pbxes (id) ON DELETE CASCADE,
    ext           text NOT NULL CHECK (ext ~ '^[0-9]{2,5}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    site_block    text NOT NULL REFERENCES blocks (id),
    did           text CHECK (did ~ '^\+[1-9][0-9]{5,14}$'),
    pickup_group  text CHECK (pickup_group ~ '^[a-z0-9][a-z0-9-]{0,31}$'),
    sip_password  text NOT NULL CHECK (sip_password ~ '^[A-Za-z0-9_-]{20,64}$'),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (pbx_id, ext)
);
-- A number rings one extension.
CREATE UNIQUE INDEX extensions_did ON extensions (did) WHERE did IS NOT NULL;
CREATE INDEX extensions_site_block ON extensions (site_block);

CREATE TABLE ring_groups (
    pbx_id        bigint NOT NULL REFERENCES pbxes (id) ON DELETE CASCADE,
    ext           text NOT NULL CHECK (ext ~ '^[0-9]{2,5}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    strategy      text NOT NULL CHECK (strategy IN ('ringall', 'hunt')),
    members       text[] NOT NULL,
    ring_seconds  integer NOT NULL CHECK (ring_seconds BETWEEN 5 AND 300),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (pbx_id, ext)
);

-- Every config written for a PBX: the files (relative path -> text) and their hash.
CREATE TABLE config_revisions (
    pbx_id      bigint NOT NULL REFERENCES pbxes (id) ON DELETE CASCADE,
    revision    integer NOT NULL,
    sha256      text NOT NULL,
    files       jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (pbx_id, revision)
);

-- What is live in Asterisk for each PBX.
CREATE TABLE apply_state (
    pbx_id         bigint PRIMARY KEY REFERENCES pbxes (id) ON DELETE CASCADE,
    state          text NOT NULL CHECK (state IN ('pending', 'applied', 'failed')),
    revision       integer,
    good_revision  integer,
    updated_at     timestamptz NOT NULL,
    error          text
);

-- An apply job is leased, not locked, while a worker renders and reloads: a change that
-- arrives meanwhile bumps the generation without waiting for the reload to finish.
ALTER TABLE apply_queue ADD COLUMN claimed_until timestamptz;
