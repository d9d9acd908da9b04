-- What happened, for the portal: every assignment state change and every apply outcome,
-- written in the transaction of the change. Pulled with GET /v1/events?after=<id>, and
-- pushed to each configured webhook endpoint in id order from its own cursor.
CREATE TABLE events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id  text NOT NULL UNIQUE,   -- the webhook-id: the same on every delivery
    type      text NOT NULL,
    at        timestamptz NOT NULL,
    data      jsonb NOT NULL
);

CREATE TABLE webhook_cursors (
    url              text PRIMARY KEY,
    last_event       bigint NOT NULL,   -- delivered up to here (at least once)
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text
);
