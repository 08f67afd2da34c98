-- The call log's indexes hold only the calls looked up through them.
--
-- The team indexes leave out the calls that have no team on
-- that side: calls to platform services (no provider team) and anonymous
-- calls (no consumer team). Nothing looks those up by team (a team filter
-- is an equality, which never matches NULL), and each such call then costs
-- one B-tree insert less per missing team. With the request id index
-- below, an anonymous call to a platform service goes into two B-trees
-- instead of five, and the call writer's CPU per call fell by a quarter
-- (bench/README.md, "Fewer index inserts per call").
-- Queries by team use the partial indexes as before (`team = ?` implies
-- `team IS NOT NULL` on SQLite and PostgreSQL).
DROP INDEX call_logs_provider;
DROP INDEX call_logs_consumer;
CREATE INDEX call_logs_provider ON call_logs (provider_team, id) WHERE provider_team IS NOT NULL;
CREATE INDEX call_logs_consumer ON call_logs (consumer_team, id) WHERE consumer_team IS NOT NULL;

-- A call whose request id the gateway minted for it alone has that id as
-- its row id (a UUID v7 of the call's start, like any row id), so it is
-- found by its id: the request id index leaves it out. It holds the calls
-- with a request id of the client's (and those logged before this).
-- Lookups ask for `id = x OR (request_id = x AND request_id <> id)`.
DROP INDEX call_logs_request;
CREATE INDEX call_logs_request ON call_logs (request_id) WHERE request_id <> id;
