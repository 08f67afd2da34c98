-- Payments through Stripe Checkout: each paid session credited to a team
-- (its top-up entry's key is `stripe:checkout:<session id>`), found again by
-- its PaymentIntent when Stripe reports a refund. `refunded_nanos` is what
-- was taken back so far (Stripe reports refunds cumulatively).
CREATE TABLE stripe_payments (
    payment_intent TEXT PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    team_id TEXT NOT NULL REFERENCES teams (id),
    amount_nanos BIGINT NOT NULL,
    refunded_nanos BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
