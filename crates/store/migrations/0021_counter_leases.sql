-- Counter leases (many nodes sharing the store, SPEC §12): the part of a
-- quota (calls or tokens per period) or of an app's budget (nano-units
-- per period) each gateway node may count without asking, as wallet
-- leases are for balances (0020). `granted` is the most a node may count
-- in the period: a node counts only within it, and a grant is made only
-- out of what no other node holds, where a node holds the larger of what
-- it counted (`usage_counters`) and, while its lease is live, what it was
-- granted. Grants for one scope and period are made one at a time: each
-- grant first locks the period's head row (node ''). So the nodes
-- together never count beyond the limit.
CREATE TABLE counter_leases (
    scope TEXT NOT NULL,
    period_start_ms BIGINT NOT NULL,
    node TEXT NOT NULL,
    granted BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, period_start_ms, node)
);
CREATE INDEX counter_leases_node ON counter_leases (node);
