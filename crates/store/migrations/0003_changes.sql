-- What each configuration version changed, so a node that is one or a few
-- versions behind can apply API key changes without reloading everything.
-- `kind` is 'key' (object_id: the key's id) or 'full' (anything else).
CREATE TABLE config_changes (
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL
);
CREATE INDEX config_changes_version ON config_changes (version);
