-- Headers and the first bytes of request and response bodies, for services
-- that log them (`log_bodies`), secrets redacted before they are written.
-- Kept and deleted with their call.
CREATE TABLE call_bodies (
    call_id TEXT PRIMARY KEY,
    request_headers TEXT NOT NULL,
    request_body TEXT,
    request_bytes BIGINT NOT NULL,
    response_headers TEXT NOT NULL,
    response_body TEXT,
    response_bytes BIGINT NOT NULL
);
