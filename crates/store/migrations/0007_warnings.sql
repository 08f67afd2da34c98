-- Early warnings sent to webhooks (SPEC §5): one row per warning key
-- (`low-balance:<team>`, `quota:<subscription>:<period start>`…). A warning
-- fires when its row turns active (a crossing), never again while it stays
-- active, and is re-armed when the condition ends. Shared by every node.
CREATE TABLE warnings (
    key TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    active BIGINT NOT NULL,
    changed_at_ms BIGINT NOT NULL
);
