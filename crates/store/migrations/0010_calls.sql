-- The call log (SPEC §2): one row per request through the gateway,
-- refusals included, written in batches by each node's call writer. The id
-- is a UUID v7 made from the call's own time, so the primary key orders
-- rows by time and time ranges are id ranges.
CREATE TABLE call_logs (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    method TEXT NOT NULL,
    host TEXT,
    path TEXT NOT NULL,
    status BIGINT NOT NULL,
    code TEXT,
    latency_us BIGINT NOT NULL,
    upstream_latency_us BIGINT,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    client_ip TEXT NOT NULL,
    consumer_team TEXT,
    app TEXT,
    key_prefix TEXT,
    subscription_id TEXT,
    plan TEXT,
    provider_team TEXT,
    service TEXT,
    route_id TEXT,
    upstream_target TEXT,
    cost_nanos BIGINT NOT NULL,
    problem TEXT,
    provider TEXT,
    model TEXT,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    ttft_us BIGINT,
    completed BIGINT NOT NULL
);
CREATE INDEX call_logs_request ON call_logs (request_id);
CREATE INDEX call_logs_provider ON call_logs (provider_team, id);
CREATE INDEX call_logs_consumer ON call_logs (consumer_team, id);

-- Analytics rollups: per minute (kept 30 days by default) and per hour
-- (a year), one row per bucket and combination of provider team, consumer
-- team, service, app, model, status and refusal code (empty strings for
-- none). Nodes add their counts (upsert), so the rows are totals over
-- every node. h0..h15 count latencies per bucket of
-- `domain::calls::LATENCY_BUCKETS_US`.
CREATE TABLE rollups_minute (
    bucket_ms BIGINT NOT NULL,
    provider_team TEXT NOT NULL,
    consumer_team TEXT NOT NULL,
    service TEXT NOT NULL,
    app TEXT NOT NULL,
    model TEXT NOT NULL,
    status BIGINT NOT NULL,
    code TEXT NOT NULL,
    requests BIGINT NOT NULL,
    latency_sum_us BIGINT NOT NULL,
    upstream_sum_us BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    h0 BIGINT NOT NULL,
    h1 BIGINT NOT NULL,
    h2 BIGINT NOT NULL,
    h3 BIGINT NOT NULL,
    h4 BIGINT NOT NULL,
    h5 BIGINT NOT NULL,
    h6 BIGINT NOT NULL,
    h7 BIGINT NOT NULL,
    h8 BIGINT NOT NULL,
    h9 BIGINT NOT NULL,
    h10 BIGINT NOT NULL,
    h11 BIGINT NOT NULL,
    h12 BIGINT NOT NULL,
    h13 BIGINT NOT NULL,
    h14 BIGINT NOT NULL,
    h15 BIGINT NOT NULL,
    PRIMARY KEY (bucket_ms, provider_team, consumer_team, service, app, model, status, code)
);

CREATE TABLE rollups_hour (
    bucket_ms BIGINT NOT NULL,
    provider_team TEXT NOT NULL,
    consumer_team TEXT NOT NULL,
    service TEXT NOT NULL,
    app TEXT NOT NULL,
    model TEXT NOT NULL,
    status BIGINT NOT NULL,
    code TEXT NOT NULL,
    requests BIGINT NOT NULL,
    latency_sum_us BIGINT NOT NULL,
    upstream_sum_us BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    h0 BIGINT NOT NULL,
    h1 BIGINT NOT NULL,
    h2 BIGINT NOT NULL,
    h3 BIGINT NOT NULL,
    h4 BIGINT NOT NULL,
    h5 BIGINT NOT NULL,
    h6 BIGINT NOT NULL,
    h7 BIGINT NOT NULL,
    h8 BIGINT NOT NULL,
    h9 BIGINT NOT NULL,
    h10 BIGINT NOT NULL,
    h11 BIGINT NOT NULL,
    h12 BIGINT NOT NULL,
    h13 BIGINT NOT NULL,
    h14 BIGINT NOT NULL,
    h15 BIGINT NOT NULL,
    PRIMARY KEY (bucket_ms, provider_team, consumer_team, service, app, model, status, code)
);
