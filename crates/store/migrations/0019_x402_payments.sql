-- x402 payments claimed by a call (SPEC §6): one row per payment (its
-- identity: SHA-256 of payer and nonce on its network, hex), from the
-- moment a node verifies it until its authorization can no longer be
-- valid (`until_ms`). Every node sharing the store claims here before it
-- forwards a paid call, so one payment never serves two calls, on two
-- nodes or across a restart. A call that was not settled gives its row
-- back; rows past `until_ms` may be claimed again and are swept.
CREATE TABLE x402_payments (
    identity TEXT PRIMARY KEY,
    claimed_at_ms BIGINT NOT NULL,
    until_ms BIGINT NOT NULL
);
