-- Models operators add to a provider, or whose catalogue prices they
-- override (prices per million tokens as decimal strings in the spec).
CREATE TABLE provider_models (
    provider_id TEXT NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    spec TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (provider_id, model)
);
