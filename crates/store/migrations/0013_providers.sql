-- AI providers (SPEC §2) and the pools of API keys the gateway uses with
-- them. A key is stored only sealed (AES-256-GCM under the deployment's
-- master key, bound to its provider's id) with a hint of its last
-- characters.
CREATE TABLE providers (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE provider_keys (
    id TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    label TEXT,
    sealed TEXT NOT NULL,
    hint TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX provider_keys_provider ON provider_keys (provider_id);
