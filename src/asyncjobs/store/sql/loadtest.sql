-- The load-test harness's own statements (asyncjobs.loadtest.db). Tokens as in queries.sql:
-- {schema} and {t} are validated identifiers, never user data; everything else is bound.
-- They read jobs by primary key only, so they cost the cluster under test one index probe per
-- job, whatever its history holds.

-- name: loadtest_finished
-- Of the jobs $1, those that have finished, with their timings in epoch seconds (created_at is
-- the database's clock at insert; started_at and finished_at are the node's clock).
SELECT id,
       state::text AS state,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at,
       error ->> 'type' AS error_type,
       reason
FROM {t}jobs
WHERE id = ANY($1::uuid[]) AND state IN ('succeeded', 'failed', 'cancelled', 'lost');

-- name: loadtest_current
-- The jobs $1 as they are now, finished or not, with the same columns as loadtest_finished:
-- one snapshot per job for the end of a run.
SELECT id,
       state::text AS state,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at,
       error ->> 'type' AS error_type,
       reason
FROM {t}jobs
WHERE id = ANY($1::uuid[]);

-- name: loadtest_schema_exists
-- Whether schema $1 exists (a run drops only a schema it created itself).
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1);

-- name: loadtest_drop_schema
-- Drops the run's own schema and everything in it.
DROP SCHEMA IF EXISTS {schema} CASCADE;
