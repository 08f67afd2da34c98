-- The slugs of deleted teams. Call logs, rollups and the audit log name
-- teams by slug and outlive the team; a new team taking the slug would
-- see the old one's calls, analytics and history as its own. A deleted
-- team's slug is therefore never given out again.
CREATE TABLE retired_team_slugs (
    slug TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    retired_at_ms BIGINT NOT NULL
);
