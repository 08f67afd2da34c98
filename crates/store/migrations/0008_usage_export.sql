-- Usage export (SPEC §6): each metered call's usage event, queued in the
-- transaction that records its charge, once per destination
-- (`cloudevents`, `stripe`), and deleted once delivered. Delivery is at
-- least once; receivers deduplicate by the event's id (the request id).
CREATE TABLE usage_outbox (
    id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    team_id TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX usage_outbox_due ON usage_outbox (destination, next_attempt_at_ms);

-- The Stripe customer that paid a team's top-ups (meter events name it).
CREATE TABLE stripe_customers (
    team_id TEXT PRIMARY KEY REFERENCES teams (id),
    customer TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
