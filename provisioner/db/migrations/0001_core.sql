-- Core schema: accounts, their cloud PBXs, number blocks, assignments and their audit
-- trail, plus the tables that carry side effects out after commit (mail outbox, apply
-- queue) and the idempotency records of the API.

CREATE TABLE accounts (
    customer    text PRIMARY KEY CHECK (customer ~ '^[A-Za-z0-9]{2,32}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    language    text NOT NULL CHECK (language IN ('de', 'en')),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- A cloud PBX (tenant). At most one per account: the UNIQUE on customer says so.
CREATE TABLE pbxes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer    text NOT NULL UNIQUE REFERENCES accounts (customer),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]{2,32}$'),
    created_at  timestamptz NOT NULL
);

CREATE TABLE blocks (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    owner         text NOT NULL REFERENCES accounts (customer),
    base_number   text NOT NULL CHECK (base_number ~ '^\+[1-9][0-9]{5,14}$'),
    range_first   text CHECK (range_first ~ '^[0-9]{1,4}$'),
    range_last    text CHECK (range_last ~ '^[0-9]{1,4}$'),
    country_code  integer NOT NULL,
    area_code     text NOT NULL CHECK (area_code ~ '^[0-9]{1,6}$'),
    mode          text NOT NULL CHECK (mode IN ('standard', 'pbx')),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CHECK ((range_first IS NULL) = (range_last IS NULL))
);
CREATE INDEX blocks_owner ON blocks (owner);

-- The numbers of a block as ranges of span keys (digit count * 10^15 + number), one row
-- per extension length. The exclusion constraint is what guarantees that no number
-- belongs to two blocks, whatever races the API sees.
CREATE TABLE block_spans (
    block_id  text NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    span      int8range NOT NULL,
    EXCLUDE USING gist (span WITH &&)
);
CREATE INDEX block_spans_block ON block_spans (block_id);

CREATE TABLE assignments (
    id                   uuid PRIMARY KEY,
    block_id             text NOT NULL REFERENCES blocks (id),
    owner                text NOT NULL REFERENCES accounts (customer),
    target               text NOT NULL REFERENCES accounts (customer),
    target_pbx_id        bigint NOT NULL REFERENCES pbxes (id),
    state                text NOT NULL CHECK (state IN ('pending', 'active', 'reset', 'expired')),
    owner_token_hash     bytea NOT NULL UNIQUE,
    target_token_hash    bytea NOT NULL UNIQUE,
    owner_confirmed_at   timestamptz,
    target_confirmed_at  timestamptz,
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    activated_at         timestamptz,
    ended_at             timestamptz,
    CHECK (owner <> target),
    CHECK (state <> 'active' OR (owner_confirmed_at IS NOT NULL AND target_confirmed_at IS NOT NULL))
);
-- At most one live assignment per block, even when two requests race.
CREATE UNIQUE INDEX assignments_one_live_per_block
    ON assignments (block_id) WHERE state IN ('pending', 'active');
CREATE INDEX assignments_pending_expiry ON assignments (expires_at) WHERE state = 'pending';

CREATE TABLE assignment_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    assignment_id    uuid NOT NULL REFERENCES assignments (id),
    at               timestamptz NOT NULL,
    action           text NOT NULL,
    old_state        text,
    new_state        text NOT NULL,
    actor            text NOT NULL,
    acting_customer  text,
    request_id       text
);
CREATE INDEX assignment_events_assignment ON assignment_events (assignment_id, id);

-- Mails are composed inside the transaction that causes them and sent after commit.
CREATE TABLE mail_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       text NOT NULL UNIQUE,
    recipient        text NOT NULL,
    subject          text NOT NULL,
    body             text NOT NULL,
    created_at       timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    sent_at          timestamptz,
    last_error       text
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE sent_at IS NULL;

-- One row per PBX whose config must be regenerated and applied. Changes coalesce into
-- the row (generation counts them), so a burst of changes is one apply.
CREATE TABLE apply_queue (
    pbx_id           bigint PRIMARY KEY REFERENCES pbxes (id),
    generation       bigint NOT NULL DEFAULT 1,
    reason           text NOT NULL,
    requested_at     timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text
);

-- Responses to mutating requests that carried an Idempotency-Key, kept for replay.
CREATE TABLE idempotency_keys (
    client        text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    status        integer,
    content_type  text,
    body          bytea,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (client, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
