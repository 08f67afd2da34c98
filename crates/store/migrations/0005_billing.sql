-- Subscription periods (SPEC §2) and usage counters.
--
-- A subscription's current period is [period_start_ms, period_end_ms);
-- anchor_ms is where its monthly periods are counted from (activation, or
-- the end of the trial), so that anniversaries on the 31st survive short
-- months. auto_renew is 0 or 1.
ALTER TABLE subscriptions ADD COLUMN period_start_ms BIGINT;
ALTER TABLE subscriptions ADD COLUMN period_end_ms BIGINT;
ALTER TABLE subscriptions ADD COLUMN anchor_ms BIGINT;
ALTER TABLE subscriptions ADD COLUMN trial_end_ms BIGINT;
ALTER TABLE subscriptions ADD COLUMN auto_renew BIGINT NOT NULL DEFAULT 1;
CREATE INDEX subscriptions_period_end ON subscriptions (status, period_end_ms);

-- What each gateway node counted per scope (`sub:<id>`: a subscription's
-- calls in its period, for quotas; `app:<id>`: an app's spend in its budget
-- period) and period. Each node writes only its own rows, with absolute
-- values; a scope's use is the sum over nodes. A restarted node is a new
-- node, so what it counted before stays counted.
CREATE TABLE usage_counters (
    scope TEXT NOT NULL,
    period_start_ms BIGINT NOT NULL,
    node TEXT NOT NULL,
    requests BIGINT NOT NULL,
    nanos BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, period_start_ms, node)
);
CREATE INDEX usage_counters_updated ON usage_counters (updated_at_ms);
