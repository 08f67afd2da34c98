-- Day rollups: a question over weeks or months reads one row per day and
-- combination instead of 24 hour rows (a 30-day summary over 580
-- combinations an hour read 417,600 hour rows in 1.3 s; bench/README.md).
-- Same columns and key as the hour rollups; kept
-- `analytics.day_retention_days` (3 years by default).
CREATE TABLE rollups_day (
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
CREATE INDEX rollups_day_provider ON rollups_day (provider_team, bucket_ms);
CREATE INDEX rollups_day_consumer ON rollups_day (consumer_team, bucket_ms);

-- What the hour rollups hold so far, summed per UTC day.
INSERT INTO rollups_day (bucket_ms, provider_team, consumer_team, service, app, model, status, code,
    requests, latency_sum_us, upstream_sum_us, bytes_in, bytes_out, input_tokens, output_tokens, cost_nanos, h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, h11, h12, h13, h14, h15)
SELECT (bucket_ms / 86400000) * 86400000, provider_team, consumer_team, service, app, model, status, code,
    SUM(requests), SUM(latency_sum_us), SUM(upstream_sum_us), SUM(bytes_in), SUM(bytes_out), SUM(input_tokens), SUM(output_tokens), SUM(cost_nanos), SUM(h0), SUM(h1), SUM(h2), SUM(h3), SUM(h4), SUM(h5), SUM(h6), SUM(h7), SUM(h8), SUM(h9), SUM(h10), SUM(h11), SUM(h12), SUM(h13), SUM(h14), SUM(h15)
FROM rollups_hour
GROUP BY (bucket_ms / 86400000) * 86400000, provider_team, consumer_team, service, app, model, status, code;
