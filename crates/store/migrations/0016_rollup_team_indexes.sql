-- Analytics for a tenant, or for one team, read that team's rollup rows
-- along these indexes instead of every row in the time range. The primary
-- key leads with the bucket, so a tenant's question over 30 days read every
-- team's rows of those 30 days and kept its own: the cost grew with the
-- number of tenants on the platform, not with the tenant's own traffic.
-- A row is indexed once, when its bucket and combination first appear
-- (later additions update counts, not indexed columns).
CREATE INDEX rollups_minute_provider ON rollups_minute (provider_team, bucket_ms);
CREATE INDEX rollups_minute_consumer ON rollups_minute (consumer_team, bucket_ms);
CREATE INDEX rollups_hour_provider ON rollups_hour (provider_team, bucket_ms);
CREATE INDEX rollups_hour_consumer ON rollups_hour (consumer_team, bucket_ms);
