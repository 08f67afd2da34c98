-- Configuration objects. The `spec` columns hold the user-written JSON spec;
-- columns beside it are what the store queries, joins or keeps unique.
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row; `version` is bumped by every configuration write so that every
-- gateway node notices a change by polling one integer.
CREATE TABLE config_state (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO config_state (id, version) VALUES (1, 1);

CREATE TABLE upstreams (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    team TEXT,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE services (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    team TEXT,
    upstream_id TEXT REFERENCES upstreams (id),
    lifecycle TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX services_upstream ON services (upstream_id);

CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    name TEXT,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (service_id, name)
);
CREATE INDEX routes_service ON routes (service_id);

CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    note TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (service_id, version)
);
