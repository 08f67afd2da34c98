-- Alert rules (SPEC §2) and where each of their subjects stands. A subject
-- turns firing (or resolved) in one conditional update; only the node whose
-- update changed it queues the webhook event, in the same transaction, so
-- each transition is announced once whatever the number of nodes.
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    team TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX alert_rules_team ON alert_rules (team);

CREATE TABLE alert_states (
    rule_id TEXT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    firing BIGINT NOT NULL,
    value TEXT NOT NULL,
    changed_at_ms BIGINT NOT NULL,
    PRIMARY KEY (rule_id, subject)
);
