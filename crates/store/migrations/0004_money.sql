-- Wallets and their ledger (SPEC §2). Money is in nano-units (10^-9 of the
-- deployment's currency), BIGINT.
--
-- `ledger` is append-only: the code never updates or deletes a row. Each
-- entry's `idempotency_key` is unique per team, so appending the same key
-- twice records one entry. `wallets.balance_nanos` is the sum of the team's
-- entries, kept in the same transaction as each append (the row also
-- serialises concurrent appends to one wallet); `seq` orders entries.
CREATE TABLE wallets (
    team_id TEXT PRIMARY KEY REFERENCES teams (id),
    balance_nanos BIGINT NOT NULL,
    entries BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE ledger (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams (id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    amount_nanos BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT,
    request_id TEXT,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (team_id, idempotency_key),
    UNIQUE (team_id, seq)
);
CREATE INDEX ledger_team_created ON ledger (team_id, created_at_ms);
