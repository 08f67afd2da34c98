-- Auto top-up (SPEC §5): "when the balance falls under threshold, charge
-- amount" to the payment method the team saved with its last Checkout.
ALTER TABLE stripe_customers ADD COLUMN payment_method TEXT;

CREATE TABLE auto_top_ups (
    team_id TEXT PRIMARY KEY REFERENCES teams (id),
    threshold_nanos BIGINT NOT NULL,
    amount_nanos BIGINT NOT NULL,
    -- The last charge tried (a cool-down between tries) and how it ended.
    last_attempt_at_ms BIGINT NOT NULL,
    last_error TEXT,
    updated_at_ms BIGINT NOT NULL
);
