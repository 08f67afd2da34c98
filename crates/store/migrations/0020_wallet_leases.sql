-- Wallet leases (many nodes sharing the store, SPEC §12): the part of a
-- team's balance each gateway node may spend on calls without asking.
-- A lease is granted only out of the balance no other live lease holds,
-- in a transaction that locks the wallet row; a node's charges take from
-- its lease in the transaction that appends them; debits made outside
-- calls (adjustments, fees) may not take the balance below what live
-- leases hold. So the live leases never hold more than the balance, and
-- no node spends money another node may spend. A node renews its leases
-- every few hundred milliseconds (`expires_at_ms`, its own clock) and
-- stops spending well before they run out; a lease that ran out (a node
-- gone or cut off) counts for nobody.
CREATE TABLE wallet_leases (
    team_id TEXT NOT NULL REFERENCES teams (id),
    node TEXT NOT NULL,
    nanos BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (team_id, node)
);
CREATE INDEX wallet_leases_node ON wallet_leases (node);
